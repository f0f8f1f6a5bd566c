"""Native JSONL case files: one `protocols.case.Case` per line, msgspec JSON.

A broken record raises `CaseFileError` naming the file, the line number and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import msgspec

from protocols.case import Case

__all__ = ["CaseFileError", "iter_jsonl", "read_jsonl", "write_jsonl"]

_decoder = msgspec.json.Decoder(Case)
_encoder = msgspec.json.Encoder()


class CaseFileError(ValueError):
    """A case file that cannot be read; the message names the file, line and field."""

    def __init__(
        self,
        path: str,
        line: int | None,
        message: str,
        *,
        record: str = "",
        field: str = "",
    ) -> None:
        where = [path]
        if line is not None:
            where.append(f"line {line}")
        if record:
            where.append(record)
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}")
        self.path = path
        self.line = line
        self.record = record
        self.field = field
        self.detail = message


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[Case]:
    """Cases from a JSONL file, one per non-blank line."""
    name = os.fspath(path)
    with open(name, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield _decoder.decode(raw)
            except msgspec.ValidationError as exc:
                # msgspec says e.g. "Expected `int`, got `str` - at `$.profile.demographics.age`"
                raise CaseFileError(name, number, f"invalid case: {exc}") from None
            except msgspec.DecodeError as exc:
                raise CaseFileError(name, number, f"malformed JSON: {exc}") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[Case]:
    return list(iter_jsonl(path))


def write_jsonl(path: str | os.PathLike[str], cases: Iterable[Case]) -> int:
    """Write cases one per line; returns how many were written."""
    count = 0
    with open(os.fspath(path), "wb") as fh:
        for case in cases:
            fh.write(_encoder.encode(case))
            fh.write(b"\n")
            count += 1
    return count
