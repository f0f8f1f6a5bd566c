"""Text normalisation shared by the catalogue, the symptom matcher, the patient and the judge.

Everything here works on lowercase ASCII word tokens: `fold` maps Greek letters, accents, British
spellings and apostrophes away; `words` splits into alphanumeric tokens; `stem` removes plural
endings only (conservative, and applied to both sides of every comparison).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["fold", "words", "stem", "stems", "contains_phrase", "mentions", "redact"]

_GREEK = {"β": "beta", "α": "alpha", "γ": "gamma", "µ": "u", "μ": "u", "°": " "}
_BRITISH = (
    ("anaem", "anem"),
    ("haem", "hem"),
    ("leukaem", "leukem"),
    ("ischaem", "ischem"),
    ("oedem", "edem"),
    ("oesoph", "esoph"),
    ("oestr", "estr"),
    ("faec", "fec"),
    ("diarrhoe", "diarrhe"),
    ("dyspnoe", "dyspne"),
    ("orthopnoe", "orthopne"),
    ("apnoe", "apne"),
    ("tumour", "tumor"),
    ("paed", "ped"),
    ("gynaec", "gynec"),
    ("coeliac", "celiac"),
    ("alised", "alized"),
    ("alisation", "alization"),
    ("colour", "color"),
    ("goitre", "goiter"),
    ("centre", "center"),
    ("litre", "liter"),
)
_APOSTROPHE_S = re.compile(r"['’]s\b")
_APOSTROPHE = re.compile(r"['’`]")
_WORD = re.compile(r"[a-z0-9]+")


def fold(text: str) -> str:
    """Lowercase ASCII with Greek letters spelled out, US spelling and no apostrophes."""
    text = text.lower()
    for greek, latin in _GREEK.items():
        if greek in text:
            text = text.replace(greek, latin)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    for uk, us in _BRITISH:
        if uk in text:
            text = text.replace(uk, us)
    text = _APOSTROPHE_S.sub("", text)
    return _APOSTROPHE.sub("", text)


def words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def stem(word: str) -> str:
    """Remove a plural ending ("stones" -> "stone", "bodies" -> "body"); nothing else."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def stems(text: str) -> list[str]:
    return [stem(w) for w in words(text)]


def contains_phrase(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    """Whether `phrase` occurs as a contiguous run of whole tokens in `tokens`."""
    n = len(phrase)
    if n == 0 or n > len(tokens):
        return False
    first = phrase[0]
    for i in range(len(tokens) - n + 1):
        if tokens[i] == first and list(tokens[i : i + n]) == list(phrase):
            return True
    return False


@functools.lru_cache(maxsize=8192)
def _term_stems(term: str) -> tuple[str, ...]:
    return tuple(stems(term))


def mentions(text: str, terms: Iterable[str]) -> bool:
    """Whether `text` names any of `terms` as whole words (case, punctuation and plural blind)."""
    tokens = stems(text)
    return any(contains_phrase(tokens, t) for t in map(_term_stems, terms) if t)


@functools.lru_cache(maxsize=4096)
def _term_pattern(term: str) -> re.Pattern[str] | None:
    toks = words(term)
    if not toks:
        return None
    parts = [re.escape(t) for t in toks]
    parts[-1] += r"(?:e?s)?"
    body = r"[^a-z0-9]+".join(parts)
    return re.compile(r"(?<![a-z0-9])" + body + r"(?![a-z0-9])", re.IGNORECASE)


def redact(text: str, terms: Iterable[str], replacement: str = "that") -> tuple[str, bool]:
    """Replace every mention of `terms` (longest first); returns (text, whether anything changed).

    If a mention survives the replacement (an unusual spelling the pattern cannot see), the whole
    text is replaced by `replacement`, so the result never mentions a term.
    """
    ordered = sorted({t for t in terms if words(t)}, key=lambda t: -len(words(t)))
    if not mentions(text, ordered):
        return text, False
    out = text
    for term in ordered:
        pattern = _term_pattern(term)
        if pattern is not None:
            out = pattern.sub(replacement, out)
    if mentions(out, ordered):
        out = replacement
    return out, True
