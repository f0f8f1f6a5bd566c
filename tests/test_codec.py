"""The codec: every message round-trips, and untrusted bytes raise only `ProtocolError`."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import arrays, codec
from protocols.codec import (
    Envelope,
    Kind,
    ProtocolError,
    VersionMismatch,
    decode,
    decode_envelope,
    decode_frames,
    encode,
    encode_envelope,
    encode_frames,
)
from protocols.messages import Chunk, Heartbeat, Hello
from protocols.version import PROTOCOL_VERSION
from tests.strategies import STRATEGIES, any_message, message_classes, message_strategy

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None)

CLASSES = message_classes()


def test_every_message_type_has_a_strategy() -> None:
    missing = [cls.__name__ for cls in CLASSES if cls not in STRATEGIES]
    assert not missing, f"tests/strategies.py has no strategy for {missing}"
    assert len(CLASSES) >= 40  # the protocol's message set, not an accidentally empty list


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_round_trip(cls: type) -> None:
    @FAST
    @given(message_strategy(cls))
    def check(msg: object) -> None:
        assert type(msg) is cls
        data = encode(msg)
        assert decode(data) == msg
        assert decode(memoryview(data)) == msg
        env, body = decode_frames(encode_frames(Kind.REPLY, msg, id=7, service="x"))
        assert body == msg
        assert env == Envelope(PROTOCOL_VERSION, Kind.REPLY, 7, "x")

    check()


@given(kind=st.sampled_from(Kind), id=st.integers(0, 2**63 - 1), service=st.text(max_size=40))
@settings(max_examples=100, deadline=None)
def test_envelope_round_trip(kind: Kind, id: int, service: str) -> None:
    assert decode_envelope(encode_envelope(kind, id, service)) == Envelope(
        PROTOCOL_VERSION, kind, id, service
    )


# --- untrusted bytes ------------------------------------------------------------------------------


def _only_protocol_errors(fn, data) -> None:  # noqa: ANN001
    try:
        fn(data)
    except ProtocolError:
        pass  # anything else propagates and fails the test


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    _only_protocol_errors(decode, data)
    _only_protocol_errors(decode_envelope, data)
    _only_protocol_errors(decode_frames, [data, data])


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_random_frame_lists_raise_only_protocol_error(frames: list[bytes]) -> None:
    _only_protocol_errors(decode_frames, frames)


@FAST
@given(st.data())
def test_truncated_frames_are_refused(data: st.DataObject) -> None:
    msg = data.draw(any_message())
    body = encode(msg)
    cut = data.draw(st.integers(0, len(body) - 1))
    with pytest.raises(ProtocolError):
        decode(body[:cut])
    header = encode_envelope(Kind.REQUEST, 1, "patient")
    cut = data.draw(st.integers(0, len(header) - 1))
    with pytest.raises(ProtocolError):
        decode_envelope(header[:cut])
    with pytest.raises(ProtocolError):
        decode_frames([header, body[: len(body) - 1]])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_bit_flipped_frames_raise_only_protocol_error(data: st.DataObject) -> None:
    body = bytearray(encode(data.draw(any_message())))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] ^= 1 << data.draw(st.integers(0, 7))
    _only_protocol_errors(decode, bytes(body))
    header = bytearray(encode_envelope(Kind.REQUEST, 99, "examiner"))
    i = data.draw(st.integers(0, len(header) - 1))
    header[i] ^= 1 << data.draw(st.integers(0, 7))
    _only_protocol_errors(decode_envelope, bytes(header))
    _only_protocol_errors(decode_frames, [bytes(header), bytes(body)])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x91" * 3000 + b"\x00",  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 G items
        b"\xdb\xff\xff\xff\xff",  # str claiming 4 GB
        msgspec.msgpack.encode({"type": "NoSuchMessage"}),
        msgspec.msgpack.encode({"type": "Hello"}),  # missing field
        msgspec.msgpack.encode({"type": "Hello", "name": 3}),  # wrong type
        msgspec.msgpack.encode({"type": "Error", "code": 999, "message": "x"}),  # bad enum
        msgspec.msgpack.encode(Hello("a")) + b"\x00",  # trailing bytes
        msgspec.msgpack.encode([1, 2, 3]),
    ],
    ids=lambda d: d[:12].hex() or "empty",
)
def test_known_bad_bodies(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        msgspec.msgpack.encode([PROTOCOL_VERSION]),  # missing kind
        msgspec.msgpack.encode([PROTOCOL_VERSION, 99]),  # unknown kind
        msgspec.msgpack.encode([PROTOCOL_VERSION, 1, "id", ""]),
        msgspec.msgpack.encode({"version": PROTOCOL_VERSION}),
        b"\x94" + b"\x00" * 5000,  # over the header limit
    ],
    ids=lambda d: d[:12].hex() or "empty",
)
def test_known_bad_envelopes(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_envelope(data)
    assert not isinstance(info.value, VersionMismatch)


def test_wrong_frame_count() -> None:
    frames = encode_frames(Kind.CONTROL, Heartbeat())
    for bad in ([], frames[:1], [*frames, b""]):
        with pytest.raises(ProtocolError, match="expected 2 frames"):
            decode_frames(bad)


# --- versions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("theirs", [0, PROTOCOL_VERSION + 1, 2**31])
def test_version_mismatch_names_both_versions(theirs: int) -> None:
    header = msgspec.msgpack.encode(Envelope(theirs, Kind.REQUEST, 1, "patient"))
    with pytest.raises(VersionMismatch) as info:
        decode_envelope(header)
    assert f"v{theirs}" in str(info.value)
    assert f"v{PROTOCOL_VERSION}" in str(info.value)
    assert (info.value.theirs, info.value.ours) == (theirs, PROTOCOL_VERSION)
    assert isinstance(info.value, ProtocolError)
    with pytest.raises(VersionMismatch):
        decode_frames([header, encode(Heartbeat())])


def test_version_mismatch_with_a_changed_header_layout() -> None:
    # a future version may change the envelope's fields; its version is still reported
    header = msgspec.msgpack.encode([PROTOCOL_VERSION + 1, "something new", {"x": 1}])
    with pytest.raises(VersionMismatch) as info:
        decode_envelope(header)
    assert f"v{PROTOCOL_VERSION + 1}" in str(info.value)


# --- size limit -----------------------------------------------------------------------------------


def test_frames_over_the_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_FRAME_BYTES", 256)
    small = Chunk(version=1, index=0, data=b"x" * 100)
    assert decode(encode(small)) == small
    big = Chunk(version=1, index=0, data=b"x" * 300)
    with pytest.raises(ProtocolError, match="exceeds the 256-byte limit"):
        encode(big)
    oversized = msgspec.msgpack.encode(big)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(oversized)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_frames([encode_envelope(Kind.REQUEST), oversized])
    with pytest.raises(ProtocolError):
        encode_frames(Kind.REQUEST, big)


def test_default_limit_matches_the_design() -> None:
    assert codec.MAX_FRAME_BYTES == 64 * 1024 * 1024


# --- arrays ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=64))
def test_ids_round_trip(ids: list[int]) -> None:
    packed = arrays.pack_ids(ids)
    assert len(packed) == 4 * len(ids)
    assert arrays.unpack_ids(packed) == ids


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), max_size=64))
def test_floats_round_trip(values: list[float]) -> None:
    packed = arrays.pack_floats(values)
    assert len(packed) == 4 * len(values)
    assert arrays.unpack_floats(packed) == values


def test_arrays_are_little_endian() -> None:
    assert arrays.pack_ids([1, -1]) == b"\x01\x00\x00\x00\xff\xff\xff\xff"
    assert arrays.pack_floats([1.0]) == b"\x00\x00\x80\x3f"
    assert math.isnan(arrays.unpack_floats(arrays.pack_floats([math.nan]))[0])
    assert arrays.unpack_ids(b"") == [] and arrays.unpack_floats(b"") == []


def test_ragged_arrays_are_protocol_errors() -> None:
    for bad in (b"\x01", b"\x01\x02\x03\x04\x05"):
        with pytest.raises(codec.ProtocolError, match="4-byte"):
            arrays.unpack_ids(bad)
        with pytest.raises(codec.ProtocolError, match="4-byte"):
            arrays.unpack_floats(bad)
