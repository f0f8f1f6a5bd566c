"""Token ids and logprobs travel as raw little-endian arrays, not lists (far cheaper to encode)."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

_SWAP = sys.byteorder != "little"


def pack_ids(ids: Sequence[int]) -> bytes:
    """int32 little-endian."""
    a = array("i", ids)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def unpack_ids(data: bytes) -> list[int]:
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
    a = array("f")
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a.tolist()
