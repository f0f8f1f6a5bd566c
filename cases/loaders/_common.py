"""Helpers shared by the loaders: catalogue mapping, value parsing, CSV reading with checks."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from cases.catalogue import Entry, default_catalogue
from cases.jsonl import CaseFileError
from protocols.case import ExamRecord, ReferenceRange

__all__ = [
    "CaseFileError",
    "canonical",
    "humanise",
    "parse_number",
    "read_csv",
    "require",
    "unit_key",
]

_NUMBER = re.compile(r"^\s*([<>]=?\s*)?(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)\s*([^\s;,()]*)")


_SIDE = re.compile(r"\b(left|right|bilateral|both|lt|rt)\b", re.IGNORECASE)


def humanise(key: str) -> str:
    """ "Complete_Blood_Count" -> "Complete Blood Count"."""
    return re.sub(r"\s+", " ", key.replace("_", " ")).strip()


def canonical(name: str) -> Entry | None:
    """The catalogue entry a source's exam name maps to, or None."""
    if not name.strip():
        return None
    text = humanise(name)
    entry = default_catalogue().match(text)
    if entry is None:
        # "X-Ray Left Knee" / "MRI of the Right Hand": the side does not change the exam
        bare = _SIDE.sub(" ", text)
        if bare.split() != text.split() and bare.strip():
            entry = default_catalogue().match(bare)
    return entry


def parse_number(text: str) -> tuple[float | None, str]:
    """The leading number of a result text and the unit after it ("10.2 g/dL" -> 10.2, "g/dL")."""
    m = _NUMBER.match(text)
    if m is None:
        return None, ""
    try:
        value = float(m.group(2).replace(",", ""))
    except ValueError:
        return None, ""
    return value, m.group(3)


def unit_key(unit: str) -> str:
    u = unit.strip().lower().replace("µ", "u").replace("μ", "u").replace(" ", "")
    return {
        "iu/l": "u/l",
        "k/ul": "10^9/l",
        "x10^9/l": "10^9/l",
        "meq/l": "mmol/l",
        "bpm": "beats/min",
    }.get(u, u)


def reference_for(entry: Entry | None, unit: str) -> ReferenceRange | None:
    """The catalogue's reference range, only when the source's unit is the catalogue's unit."""
    if entry is None or entry.is_panel or not entry.is_numeric:
        return None
    if unit_key(unit) != unit_key(entry.unit):
        return None
    return entry.reference


def record(
    name: str,
    category: str,
    result: str,
    *,
    value: float | None = None,
    unit: str = "",
    reference: ReferenceRange | None = None,
    time_offset_h: float = 0.0,
) -> ExamRecord:
    return ExamRecord(
        name=name,
        category=category,
        result=result,
        value=value,
        unit=unit,
        reference=reference,
        time_offset_h=time_offset_h,
    )


def require(obj: Any, key: str, kind: type | tuple[type, ...], path: str, where: dict) -> Any:
    """`obj[key]` checked to be of `kind`, else `CaseFileError` naming `where` and the field."""
    field = f"{path}.{key}" if path else key
    if not isinstance(obj, dict):
        raise CaseFileError(
            where["file"],
            where.get("line"),
            f"expected an object, got {type(obj).__name__}",
            record=where.get("record", ""),
            field=path or "$",
        )
    if key not in obj:
        raise CaseFileError(
            where["file"],
            where.get("line"),
            "missing field",
            record=where.get("record", ""),
            field=field,
        )
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CaseFileError(
            where["file"],
            where.get("line"),
            f"expected {names}, got {type(value).__name__}",
            record=where.get("record", ""),
            field=field,
        )
    return value


def find_table(directory: str, names: Sequence[str]) -> str:
    """The first of `names` (plain or .gz) that exists in `directory`."""
    for name in names:
        for candidate in (name, name + ".gz"):
            path = os.path.join(directory, candidate)
            if os.path.exists(path):
                return path
    raise CaseFileError(os.path.join(directory, names[0]), None, "table not found")


def read_csv(path: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV file (plain or gzip); checks the required columns."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    try:
        fh = opener(path, "rt", newline="", encoding="utf-8")
    except OSError as exc:
        raise CaseFileError(path, None, f"cannot open: {exc}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise CaseFileError(path, 1, "empty file, no header row") from None
        except (csv.Error, UnicodeDecodeError, OSError) as exc:
            raise CaseFileError(path, 1, f"unreadable header: {exc}") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise CaseFileError(
                path, 1, f"missing column(s) {missing}; header has {header}", field=missing[0]
            )
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise CaseFileError(
                        path,
                        reader.line_num,
                        f"{len(row)} values for {len(header)} columns",
                    )
                yield reader.line_num, dict(zip(header, row, strict=True))
        except (csv.Error, UnicodeDecodeError, OSError) as exc:
            raise CaseFileError(path, reader.line_num, f"malformed CSV: {exc}") from None
