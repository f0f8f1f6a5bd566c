"""`RulesJudge`: scores an episode with explicit, configurable rules.

Diagnosis: the agent's name and the case's names are normalised (case, punctuation, articles,
British spelling, plurals; qualifiers such as "acute" and "chronic" are kept) and compared whole:
the diagnosis name -> 1 ("exact"), a synonym -> 1 ("synonym"); otherwise, if the agent's name
(or an ICD-10-CM code it typed) maps to a condition of the built-in bank whose code shares the
case's 3-character category -> `icd10_partial` ("icd10"), or the very same code -> 1 ("icd10");
else 0 ("none"). Never substring matching: "incorrect" is not "correct", "not pneumonia" is not
"pneumonia".

Exams: precision, recall and F1 of the ordered exams (canonical names, de-duplicated) against the
case's key exams; an ordered panel covers its components. With no exams ordered precision is 0
unless the case has no key exams either (then 1). Every value is clamped to [0, 1].

Reward: the weighted sum of diagnosis score, exam F1, cost, turns, format errors and leaks; each
weighted term is reported in `Verdict.components`.
"""

from __future__ import annotations

import functools
import re

import msgspec

from cases.bank import CONDITIONS, Condition, condition_terms
from cases.catalogue import Catalogue, default_catalogue
from cases.text import stem, words
from engine.actor import Actor, handles
from protocols.case import Case
from protocols.messages import Diagnose, ScoreRequest, Verdict

__all__ = [
    "RulesJudge",
    "RulesJudgeConfig",
    "exam_scores",
    "normalise_diagnosis",
    "score_diagnosis",
]

_ARTICLES = frozenset({"a", "an", "the"})
_ICD = re.compile(r"^[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?$", re.IGNORECASE)


class RulesJudgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Reward weights (each multiplies its raw quantity) and the ICD-10 partial credit."""

    diagnosis: float = 1.0  # x diagnosis score in [0, 1]
    exam_f1: float = 0.3  # x exam F1 in [0, 1]
    cost: float = -0.001  # x total exam cost
    turns: float = -0.0  # x turns used
    format_error: float = -0.1  # x format errors
    leak: float = -0.5  # x leaks
    icd10_partial: float = 0.5  # diagnosis score for a same-category ICD-10 code


def normalise_diagnosis(text: str) -> str:
    """Lowercase words without punctuation, articles or plural endings; everything else kept."""
    return " ".join(stem(w) for w in words(text) if w not in _ARTICLES)


def _icd_code(text: str) -> str:
    t = text.strip().upper()
    if not _ICD.match(t):
        return ""
    if "." not in t and len(t) > 3:
        t = t[:3] + "." + t[3:]
    return t


@functools.cache
def _bank_index() -> dict[str, Condition]:
    """Normalised name or synonym -> bank condition (names shared by two conditions dropped)."""
    index: dict[str, Condition] = {}
    clash: set[str] = set()
    for cond in CONDITIONS:
        for term in condition_terms(cond):
            key = normalise_diagnosis(term)
            if key in index and index[key].name != cond.name:
                clash.add(key)
            index[key] = cond
    for key in clash:
        del index[key]
    return index


def _bank_condition(name: str) -> Condition | None:
    return _bank_index().get(normalise_diagnosis(name))


def score_diagnosis(
    case: Case, diagnosis: Diagnose | None, partial: float = 0.5
) -> tuple[float, str]:
    """(score, match) of the agent's diagnosis against the case's."""
    if diagnosis is None:
        return 0.0, "none"
    given = normalise_diagnosis(diagnosis.name)
    if not given:
        return 0.0, "none"
    truth = case.diagnosis
    if given == normalise_diagnosis(truth.name):
        return 1.0, "exact"
    synonyms = list(truth.synonyms)
    own = _bank_condition(truth.name)
    if own is not None and own.name == truth.name:
        synonyms.extend(own.synonyms)
    if any(given == normalise_diagnosis(s) for s in synonyms):
        return 1.0, "synonym"
    case_code = _icd_code(truth.icd10) or (own.icd10 if own is not None else "")
    if not case_code:
        return 0.0, "none"
    code = _icd_code(diagnosis.name)
    if not code:
        mapped = _bank_condition(diagnosis.name)
        code = mapped.icd10 if mapped is not None else ""
    if code:
        if code == case_code:
            return 1.0, "icd10"
        if code[:3] == case_code[:3]:
            return partial, "icd10"
    return 0.0, "none"


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def exam_scores(
    ordered: list[str], key_exams: list[str], catalogue: Catalogue | None = None
) -> tuple[float, float, float]:
    """(precision, recall, F1) of ordered exams against key exams; panels cover components."""
    cat = catalogue or default_catalogue()
    ordered_set = list(dict.fromkeys(n for n in ordered if n))
    key = set(dict.fromkeys(n for n in key_exams if n))
    if not ordered_set:
        precision = 1.0 if not key else 0.0
        recall = 1.0 if not key else 0.0
    else:
        covered: set[str] = set()
        hits = 0
        for name in ordered_set:
            cover = {name}
            if name in cat:
                cover.update(cat.components(name))
            if cover & key:
                hits += 1
            covered |= cover
        for k in key:  # a key panel counts as covered when all its parts were ordered
            if k in cat and cat.get(k).is_panel and set(cat.components(k)) <= covered:
                covered.add(k)
        precision = hits / len(ordered_set)
        recall = len(key & covered) / len(key) if key else 1.0
    precision, recall = _clamp(precision), _clamp(recall)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, _clamp(f1)


class RulesJudge(Actor):
    """Service "judge": `ScoreRequest` -> `Verdict`."""

    service = "judge"
    Config = RulesJudgeConfig

    def __init__(self, config: RulesJudgeConfig | None = None) -> None:
        super().__init__(config or RulesJudgeConfig())
        self.catalogue = default_catalogue()

    @handles(ScoreRequest)
    def score(self, request: ScoreRequest) -> Verdict:
        w: RulesJudgeConfig = self.config
        dx, match = score_diagnosis(request.case, request.diagnosis, w.icd10_partial)
        precision, recall, f1 = exam_scores(request.exams, request.case.key_exams, self.catalogue)
        components = {
            "diagnosis": w.diagnosis * dx,
            "exam_f1": w.exam_f1 * f1,
            "cost": w.cost * request.cost,
            "turns": w.turns * request.turns,
            "format_errors": w.format_error * request.format_errors,
            "leaks": w.leak * request.leaks,
        }
        return Verdict(
            correct=dx >= 1.0,
            diagnosis_score=dx,
            match=match,
            exam_precision=precision,
            exam_recall=recall,
            exam_f1=f1,
            cost=request.cost,
            turns=request.turns,
            format_errors=request.format_errors,
            leaks=request.leaks,
            reward=sum(components.values()),
            components=components,
        )
