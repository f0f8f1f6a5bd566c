"""Frames on the wire: an `Envelope` header frame and a body frame, both msgpack.

The header is tiny and array-like so that the hub can route a request by decoding only the header
and forwarding the body bytes untouched. One ZeroMQ message carries one or more (envelope, body)
pairs: senders batch whatever is queued for the same peer into one message, which costs one
wake-up of ZeroMQ's I/O thread instead of one per message. Decoding untrusted bytes raises only
`ProtocolError`.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from protocols.messages import Message
from protocols.version import PROTOCOL_VERSION

MAX_FRAME_BYTES: int = 64 * 1024 * 1024  # also set as the sockets' ZMQ_MAXMSGSIZE


class ProtocolError(Exception):
    """Bytes that are not a valid dxsim message (malformed, wrong version, too large)."""


class VersionMismatch(ProtocolError):
    def __init__(self, theirs: int, ours: int = PROTOCOL_VERSION) -> None:
        super().__init__(
            f"protocol version mismatch: peer speaks v{theirs}, this side speaks v{ours}"
        )
        self.theirs = theirs
        self.ours = ours


class Kind(enum.IntEnum):
    REQUEST = 1  # body is a service request; `service` names the service
    REPLY = 2  # body answers the request with the same id (may be an `Error`)
    CONTROL = 3  # body is a control message (Hello, Ready, Heartbeat, Shutdown, ...)


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    version: int
    kind: Kind
    id: int = 0
    service: str = ""


_encoder = msgspec.msgpack.Encoder()
_env_decoder = msgspec.msgpack.Decoder(Envelope)
_msg_decoder = msgspec.msgpack.Decoder(Message)
_any_decoder = msgspec.msgpack.Decoder()


def _check_size(data: bytes | memoryview, what: str) -> None:
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{what} of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")


def encode(msg: Any) -> bytes:
    """Encode a message body (any Struct of `protocols.messages`)."""
    data = _encoder.encode(msg)
    _check_size(data, "message")
    return data


def decode(data: bytes | memoryview) -> Message:
    """Decode a message body; anything but a valid message raises `ProtocolError`."""
    _check_size(data, "message")
    try:
        return _msg_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"malformed message body: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: nothing else may escape
        raise ProtocolError(f"malformed message body: {type(exc).__name__}: {exc}") from None


def encode_envelope(kind: Kind, id: int = 0, service: str = "") -> bytes:
    return _encoder.encode(Envelope(PROTOCOL_VERSION, kind, id, service))


def decode_envelope(data: bytes | memoryview) -> Envelope:
    """Decode a header frame; a peer of another protocol version raises `VersionMismatch`."""
    if len(data) > 4096:
        raise ProtocolError(f"header frame of {len(data)} bytes is too large")
    try:
        env = _env_decoder.decode(data)
    except Exception as exc:  # noqa: BLE001
        # A future version may change the layout; report the version if it is still readable.
        theirs = _peek_version(data)
        if theirs is not None and theirs != PROTOCOL_VERSION:
            raise VersionMismatch(theirs) from None
        raise ProtocolError(f"malformed envelope: {exc}") from None
    if env.version != PROTOCOL_VERSION:
        raise VersionMismatch(env.version)
    return env


def _peek_version(data: bytes | memoryview) -> int | None:
    try:
        raw = _any_decoder.decode(data)
    except Exception:  # noqa: BLE001
        return None
    if isinstance(raw, list) and raw and type(raw[0]) is int:
        return raw[0]
    return None


def encode_frames(kind: Kind, body: Any, id: int = 0, service: str = "") -> list[bytes]:
    """The two frames of one message."""
    return [encode_envelope(kind, id, service), encode(body)]


def decode_frames(frames: list[bytes]) -> tuple[Envelope, Message]:
    """Exactly one (envelope, body) pair."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames (envelope, body), got {len(frames)}")
    return decode_envelope(frames[0]), decode(frames[1])


def check_pairs(frames: list[bytes]) -> None:
    """A message is one or more (envelope, body) pairs."""
    if not frames or len(frames) % 2:
        raise ProtocolError(f"expected (envelope, body) frame pairs, got {len(frames)} frame(s)")
