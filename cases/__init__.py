"""Clinical cases: the built-in synthetic bank, the exam catalogue and case file formats.

`builtin(n, seed)` generates the deterministic synthetic bank; `default_catalogue()` is the exam
catalogue every exam name is matched against; `read_jsonl` / `write_jsonl` store cases as JSONL.
Imports only `protocols` (and the standard library and msgspec).
"""

from cases.bank import CONDITIONS, Condition, builtin, condition_by_name, generate_case
from cases.catalogue import Catalogue, Entry, default_catalogue
from cases.jsonl import CaseFileError, iter_jsonl, read_jsonl, write_jsonl

__all__ = [
    "CONDITIONS",
    "Catalogue",
    "CaseFileError",
    "Condition",
    "Entry",
    "builtin",
    "condition_by_name",
    "default_catalogue",
    "generate_case",
    "iter_jsonl",
    "read_jsonl",
    "write_jsonl",
]
