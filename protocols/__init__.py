"""dxsim's wire protocol: message types, the codec and the text dialects. Imports only msgspec."""

from protocols.arrays import pack_floats, pack_ids, unpack_floats, unpack_ids
from protocols.case import (
    Case,
    Demographics,
    Diagnosis,
    ExamRecord,
    PatientProfile,
    ReferenceRange,
    Symptom,
)
from protocols.codec import (
    MAX_FRAME_BYTES,
    Envelope,
    Kind,
    ProtocolError,
    VersionMismatch,
    check_pairs,
    decode,
    decode_envelope,
    decode_frames,
    encode,
    encode_envelope,
    encode_frames,
)
from protocols.dialects import DIALECTS, Dialect, UnknownDialect, get_dialect
from protocols.messages import *  # noqa: F403 - every message type is public
from protocols.messages import __all__ as _messages
from protocols.version import PROTOCOL_VERSION

__all__ = [  # noqa: F405
    "PROTOCOL_VERSION",
    "MAX_FRAME_BYTES",
    "Case",
    "Demographics",
    "Diagnosis",
    "Envelope",
    "ExamRecord",
    "Kind",
    "PatientProfile",
    "ProtocolError",
    "ReferenceRange",
    "Symptom",
    "VersionMismatch",
    "check_pairs",
    "DIALECTS",
    "Dialect",
    "UnknownDialect",
    "get_dialect",
    "decode",
    "decode_envelope",
    "decode_frames",
    "encode",
    "encode_envelope",
    "encode_frames",
    "pack_floats",
    "pack_ids",
    "unpack_floats",
    "unpack_ids",
    *_messages,
]
