"""DDXPlus metadata: the questions a patient can be asked and what the answers mean.

`release_evidences.json` holds 223 evidences (`E_<n>`): an English question, a data type (B binary
yes/no, C categorical: one value, numeric 0-10 scales or coded `V_<n>` values, M multi-choice:
several coded values), a default value and the English meaning of each coded value.
`release_conditions.json` holds 49 conditions with their ICD-10 code, severity (1-5), and the
evidences that are symptoms or antecedents of each. A DDXPlus patient is a condition plus a list of
evidence strings: `"E_91"` (binary, present), `"E_56_@_7"` (scale value), `"E_55_@_V_89"` (coded
value; one string per value of a multi-choice evidence).

ICD-10 codes are normalised to upper case; `"j17, j18"` becomes `"J17"` with `"J18"` kept in
`Condition.icd10_all`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

import msgspec

from cases.jsonl import CaseFileError
from protocols.case import Case, Demographics, Diagnosis, PatientProfile, Symptom

__all__ = [
    "DDXPlusCondition",
    "DDXPlusOntology",
    "Evidence",
    "case_from_evidences",
    "load",
    "parse_evidence",
]


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    question: str  # English
    data_type: str  # "B" | "C" | "M"
    is_antecedent: bool = False
    default: str | int | float | None = None
    values: dict[str, str] = {}  # coded value -> English meaning ({} for B and numeric C)
    possible: tuple[str | int | float, ...] = ()
    question_fr: str = ""

    def meaning(self, value: str | int | float) -> str:
        """The English meaning of an answer value ("V_89" -> "tugging"; 7 -> "7")."""
        if isinstance(value, str) and value in self.values:
            return self.values[value]
        return str(value)


class DDXPlusCondition(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    icd10: str
    severity: int
    symptoms: tuple[str, ...]
    antecedents: tuple[str, ...]
    name_fr: str = ""
    icd10_all: tuple[str, ...] = ()


class DDXPlusOntology:
    def __init__(
        self, conditions: Iterable[DDXPlusCondition], evidences: Iterable[Evidence]
    ) -> None:
        self.conditions: dict[str, DDXPlusCondition] = {c.name: c for c in conditions}
        self.evidences: dict[str, Evidence] = {e.code: e for e in evidences}
        self._folded = {c.name.casefold(): c for c in self.conditions.values()}

    def condition(self, name: str) -> DDXPlusCondition:
        """A condition by name (case-insensitive); `KeyError` if unknown."""
        try:
            return self._folded[name.casefold().strip()]
        except KeyError:
            raise KeyError(f"unknown DDXPlus condition {name!r}") from None

    def question(self, code: str) -> str:
        """The English question of an evidence code ("E_91" -> "Do you have a fever ...?")."""
        return self.evidences[code].question

    def evidences_for(self, condition: str | DDXPlusCondition) -> list[Evidence]:
        """The condition's symptom then antecedent evidences."""
        c = condition if isinstance(condition, DDXPlusCondition) else self.condition(condition)
        return [self.evidences[code] for code in (*c.symptoms, *c.antecedents)]


def parse_evidence(text: str) -> tuple[str, str | int | None]:
    """ "E_91" -> ("E_91", None); "E_56_@_7" -> ("E_56", 7); "E_55_@_V_89" -> ("E_55", "V_89")."""
    code, sep, value = text.partition("_@_")
    if not sep:
        return code, None
    return code, int(value) if value.lstrip("-").isdigit() else value


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise CaseFileError(path, None, f"cannot open: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CaseFileError(path, exc.lineno, f"malformed JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise CaseFileError(path, None, f"expected an object, got {type(data).__name__}")
    return data


def _field(path: str, record: str, obj: object, key: str, kind: type | tuple) -> object:
    if not isinstance(obj, dict):
        raise CaseFileError(path, None, "expected an object", record=record)
    if key not in obj:
        raise CaseFileError(path, None, "missing field", record=record, field=key)
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise CaseFileError(
            path, None, f"wrong type {type(value).__name__}", record=record, field=key
        )
    return value


def load(directory: str) -> DDXPlusOntology:
    """The ontology of a DDXPlus folder (release_conditions.json, release_evidences.json)."""
    d = os.fspath(directory)
    ep = os.path.join(d, "release_evidences.json")
    evidences = []
    for key, raw in _read(ep).items():
        rec = f"evidence {key!r}"
        dtype = _field(ep, rec, raw, "data_type", str)
        if dtype not in ("B", "C", "M"):
            raise CaseFileError(
                ep, None, f"unknown data type {dtype!r}", record=rec, field="data_type"
            )
        meanings = _field(ep, rec, raw, "value_meaning", dict)
        values = {}
        for v, m in meanings.items():
            en = m.get("en") if isinstance(m, dict) else None
            if not isinstance(en, str):
                raise CaseFileError(
                    ep, None, "no English meaning", record=rec, field=f"value_meaning.{v}.en"
                )
            values[v] = en
        evidences.append(
            Evidence(
                code=str(_field(ep, rec, raw, "name", str)),
                question=str(_field(ep, rec, raw, "question_en", str)),
                question_fr=str(raw.get("question_fr", "")),
                data_type=str(dtype),
                is_antecedent=bool(_field(ep, rec, raw, "is_antecedent", bool)),
                default=raw.get("default_value"),
                values=values,
                possible=tuple(_field(ep, rec, raw, "possible-values", list)),
            )
        )
    known = {e.code for e in evidences}
    cp = os.path.join(d, "release_conditions.json")
    conditions = []
    for key, raw in _read(cp).items():
        rec = f"condition {key!r}"
        codes = [
            c.strip().upper()
            for c in str(_field(cp, rec, raw, "icd10-id", str)).split(",")
            if c.strip()
        ]
        lists = {}
        for part in ("symptoms", "antecedents"):
            refs = tuple(_field(cp, rec, raw, part, dict))
            unknown = [r for r in refs if r not in known]
            if unknown:
                raise CaseFileError(
                    cp, None, f"unknown evidence {unknown[0]!r}", record=rec, field=part
                )
            lists[part] = refs
        conditions.append(
            DDXPlusCondition(
                name=str(_field(cp, rec, raw, "condition_name", str)),
                name_fr=str(raw.get("cond-name-fr", "")),
                icd10=codes[0] if codes else "",
                icd10_all=tuple(codes),
                severity=int(_field(cp, rec, raw, "severity", int)),  # type: ignore[arg-type]
                symptoms=lists["symptoms"],
                antecedents=lists["antecedents"],
            )
        )
    return DDXPlusOntology(conditions, evidences)


def case_from_evidences(
    ontology: DDXPlusOntology,
    condition: str,
    evidences: Iterable[str],
    *,
    age: int,
    sex: str,
    case_id: str = "",
) -> Case:
    """A Case from a DDXPlus patient record: symptoms are the present evidences (question text as
    the name, the answer's English meaning as the detail), antecedents go to past history; the
    first symptom is the chief complaint. No exams: DDXPlus is an interview data set."""
    cond = ontology.condition(condition)
    answers: dict[str, list[str]] = {}
    evidences_list = list(evidences)
    for text in evidences_list:
        code, value = parse_evidence(text)
        if code not in ontology.evidences:
            raise KeyError(f"unknown DDXPlus evidence {code!r}")
        ev = ontology.evidences[code]
        answers.setdefault(code, [])
        if value is not None:
            answers[code].append(ev.meaning(value))
    symptoms, past = [], []
    for code, vals in answers.items():
        ev = ontology.evidences[code]
        detail = ", ".join(vals)
        if ev.is_antecedent:
            past.append(f"{ev.question} {detail or 'yes'}".strip())
        else:
            symptoms.append(Symptom(name=ev.question, detail=detail))
    sex = {"F": "female", "M": "male"}.get(sex, sex)
    key = "|".join([cond.name, str(age), sex, *sorted(evidences_list)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Case(
        id=case_id or f"ddxplus-{cond.icd10}-{digest}",
        profile=PatientProfile(
            demographics=Demographics(age=age, sex=sex),
            chief_complaint=symptoms[0].name if symptoms else "",
            symptoms=symptoms,
            past_history=past,
        ),
        diagnosis=Diagnosis(name=cond.name, icd10=cond.icd10),
        source="ddxplus",
    )
