"""Token ids and logprobs travel as raw little-endian arrays, not lists (far cheaper to encode)."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

from protocols.codec import ProtocolError

_SWAP = sys.byteorder != "little"


def pack_ids(ids: Sequence[int]) -> bytes:
    """int32 little-endian."""
    a = array("i", ids)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def _check(data: bytes, what: str) -> None:
    if len(data) % 4:
        raise ProtocolError(f"{what}: {len(data)} bytes is not a whole number of 4-byte items")


def unpack_ids(data: bytes) -> list[int]:
    """Raises `ProtocolError` for bytes that are not whole int32 items (they came off the wire)."""
    _check(data, "token ids")
    a = array("i")
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a.tolist()


def pack_floats(values: Sequence[float]) -> bytes:
    """float32 little-endian."""
    a = array("f", values)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def unpack_floats(data: bytes) -> list[float]:
    _check(data, "logprobs")
    a = array("f")
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a.tolist()
