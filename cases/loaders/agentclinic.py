"""AgentClinic OSCE JSONL (`{"OSCE_Examination": {...}}` per line) to `protocols.Case`.

Mapping:
- `Patient_Actor.Demographics` ("45-year-old male", "2-week-old female newborn", "Newborn, female")
  -> age in whole years (months, weeks, days and newborns are 0) and sex (from the words, else the
  pronouns of `History`, else "other"); "Caucasian"/"white"/... -> ethnicity.
- `Symptoms.Primary_Symptom` -> chief complaint and first symptom; `Secondary_Symptoms` -> symptoms;
  `History` (+ `Review_of_Systems`) -> history of present illness; `Past_Medical_History`,
  `Social_History`, `Current_Medications` / `Medications` / `Drug_History` -> the profile lists
  (placeholders such as "Information not provided." are dropped).
- `Physical_Examination_Findings`: one record per section, vital signs one per sign (blood pressure
  split into systolic and diastolic), named by the catalogue where it matches, else by the
  section's own name with category "physical".
- `Test_Results`: each orderable test (a top-level key, or the members of a grouping key such as
  "Imaging" or "Blood_Tests") becomes a key exam; its leaves become records, a named component
  ("Hemoglobin") under its own catalogue name, a "Findings"/"Result" leaf under the test's name.
  Unmatched tests keep their name (underscores to spaces) with category "other" ("imaging" under
  an "Imaging" group). Values: the leading number and its unit as written; the catalogue's
  reference range only when the unit is the catalogue's.
- `Correct_Diagnosis` -> diagnosis (no ICD-10 code in the source).
"""

from __future__ import annotations

import os
import re
from typing import Any

import msgspec

from cases.catalogue import Entry, default_catalogue
from cases.jsonl import CaseFileError
from cases.loaders._common import (
    canonical,
    humanise,
    parse_number,
    record,
    reference_for,
    require,
)
from cases.text import fold
from protocols.case import Case, Demographics, Diagnosis, ExamRecord, PatientProfile, Symptom

__all__ = ["load", "mapping_report", "parse_demographics"]

_AGE = re.compile(r"(\d+)\s*-?\s*(year|month|week|day|hour)s?\s*-?\s*old")
_MALE = re.compile(r"\b(male|man|boy|gentleman|son|father|husband)\b")
_FEMALE = re.compile(
    r"\b(female|woman|girl|lady|daughter|mother|wife|gravida|nulliparous|pregnant)\b"
)
_ETHNIC = re.compile(
    r"\b(caucasian|white|black|african american|hispanic|latino|latina|asian)\b", re.IGNORECASE
)
_PLACEHOLDER = re.compile(
    r"^(information not (provided|available)|not provided|none|n/?a|unknown|"
    r"no additional symptoms provided)\.?$",
    re.IGNORECASE,
)
_GENERIC_LEAF = frozenset(
    {
        "findings",
        "finding",
        "result",
        "results",
        "impression",
        "report",
        "interpretation",
        "description",
        "value",
        "status",
        "observation",
        "observations",
    }
)
_GROUPS = frozenset(
    {
        "imaging",
        "imaging studies",
        "blood tests",
        "blood test",
        "blood work",
        "bloodwork",
        "laboratory tests",
        "laboratory studies",
        "laboratory",
        "laboratory results",
        "labs",
        "lab tests",
        "additional tests",
        "other tests",
        "tests",
        "special tests",
        "investigations",
        "basic laboratory tests",
        "imaging and other tests",
        "infectious disease testing",
        "screening tests",
        "special test",
        "other",
        "serology",
        "assessment tools",
    }
)


def parse_demographics(text: str, history: str = "") -> Demographics:
    """Age in whole years and sex from "45-year-old male" style text."""
    low = fold(text)
    age = 0
    m = _AGE.search(low)
    if m is not None and m.group(2) == "year":
        age = int(m.group(1))
    sex = "other"
    if _FEMALE.search(low):
        sex = "female"
    elif _MALE.search(low):
        sex = "male"
    else:
        h = fold(history)
        she = len(re.findall(r"\b(she|her|hers)\b", h))
        he = len(re.findall(r"\b(he|him|his)\b", h))
        if she > he:
            sex = "female"
        elif he > she:
            sex = "male"
    e = _ETHNIC.search(text)
    return Demographics(age=age, sex=sex, ethnicity=e.group(1).lower() if e else "")


def _texts(value: Any) -> list[str]:
    """A str / list / dict source field as a list of non-placeholder strings."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list):
        items = [str(v) for v in value]
    elif isinstance(value, dict):
        items = [f"{humanise(k)}: {_flatten(v)}" for k, v in value.items()]
    else:
        items = [str(value)]
    return [s.strip() for s in items if s.strip() and not _PLACEHOLDER.match(s.strip())]


def _flatten(value: Any) -> str:
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            text = _flatten(v)
            parts.append(text if humanise(k).lower() in _GENERIC_LEAF else f"{humanise(k)}: {text}")
        return "; ".join(parts)
    if isinstance(value, list):
        return "; ".join(_flatten(v) for v in value)
    return str(value)


def _valued(entry: Entry | None, name: str, category: str, text: str) -> ExamRecord:
    value, unit = parse_number(text)
    if entry is not None and (entry.is_panel or not entry.is_numeric):
        value, unit = None, ""
    if entry is not None and entry.name == "temperature" and value is not None:
        if unit.upper().endswith("F") or (not unit and value > 50):
            value, unit = round((value - 32) * 5 / 9, 1), "C"
        elif unit.upper().endswith("C"):
            unit = "C"
    return record(
        name, category, text, value=value, unit=unit, reference=reference_for(entry, unit)
    )


def _vitals(section: Any) -> list[ExamRecord]:
    out: list[ExamRecord] = []
    items = section.items() if isinstance(section, dict) else [("Vital signs", section)]
    for key, raw in items:
        text = _flatten(raw)
        entry = canonical(key)
        if entry is not None and entry.name == "blood pressure":
            m = re.search(r"(\d{2,3})\s*/\s*(\d{2,3})", text)
            if m is not None:
                cat = default_catalogue()
                for comp, num in zip(entry.panel, m.groups(), strict=True):
                    e = cat.get(comp)
                    out.append(
                        record(
                            comp,
                            e.category,
                            text,
                            value=float(num),
                            unit="mmHg",
                            reference=e.reference,
                        )
                    )
                continue
        name = entry.name if entry is not None else humanise(key)
        out.append(_valued(entry, name, entry.category if entry else "physical", text))
    return out


def _physical(findings: dict) -> list[ExamRecord]:
    out: list[ExamRecord] = []
    for key, raw in findings.items():
        if fold(humanise(key)).startswith("vital sign"):
            out.extend(_vitals(raw))
            continue
        entry = canonical(key)
        name = entry.name if entry is not None else humanise(key)
        out.append(record(name, entry.category if entry else "physical", _flatten(raw)))
    return out


def _is_group(key: str, raw: Any) -> bool:
    if not isinstance(raw, dict) or not raw:
        return False
    if fold(humanise(key)) in _GROUPS:
        return True
    if canonical(key) is not None:
        return False
    # an unknown heading whose members are mostly tests of their own ("Serum_Chemistry": Na, K...)
    known = sum(1 for k in raw if canonical(k) is not None)
    return known * 2 > len(raw) and not any(fold(humanise(k)) in _GENERIC_LEAF for k in raw)


def _test(key: str, raw: Any, hint: str) -> tuple[str, bool, list[ExamRecord]]:
    """(key exam name, matched?, records) of one orderable test."""
    entry = canonical(key)
    name = entry.name if entry is not None else humanise(key)
    category = entry.category if entry is not None else hint
    records: list[ExamRecord] = []
    if not isinstance(raw, dict):
        records.append(_valued(entry, name, category, _flatten(raw)))
        return name, entry is not None, records
    own: list[str] = []
    for sub, value in raw.items():
        label = humanise(sub)
        if fold(label) in _GENERIC_LEAF or isinstance(value, dict) and canonical(sub) is None:
            own.append(
                _flatten(value) if fold(label) in _GENERIC_LEAF else f"{label}: {_flatten(value)}"
            )
            continue
        sub_entry = canonical(sub)
        if sub_entry is not None and sub_entry.name != name:
            records.append(_valued(sub_entry, sub_entry.name, sub_entry.category, _flatten(value)))
        else:
            own.append(f"{label}: {_flatten(value)}")
    if own or not records:
        records.insert(0, _valued(entry, name, category, "; ".join(own)))
    return name, entry is not None, records


def _tests(results: dict, hint: str = "other") -> list[tuple[str, bool, list[ExamRecord]]]:
    out = []
    for key, raw in results.items():
        if _is_group(key, raw):
            sub_hint = "imaging" if "imaging" in fold(key) else hint
            out.extend(_tests(raw, sub_hint))
        else:
            out.append(_test(key, raw, hint))
    return out


def _case(obj: Any, where: dict, number: int) -> tuple[Case, list[tuple[str, bool]]]:
    osce = require(obj, "OSCE_Examination", dict, "", where)
    p = "OSCE_Examination"
    actor = require(osce, "Patient_Actor", dict, p, where)
    pa = f"{p}.Patient_Actor"
    demo_text = require(actor, "Demographics", str, pa, where)
    history = require(actor, "History", str, pa, where)
    symptoms = require(actor, "Symptoms", dict, pa, where)
    primary = require(symptoms, "Primary_Symptom", str, f"{pa}.Symptoms", where)
    secondary = symptoms.get("Secondary_Symptoms", [])
    if isinstance(secondary, str):
        secondary = [secondary]
    if not isinstance(secondary, list):
        require(symptoms, "Secondary_Symptoms", list, f"{pa}.Symptoms", where)
    findings = require(osce, "Physical_Examination_Findings", dict, p, where)
    results = require(osce, "Test_Results", dict, p, where)
    diagnosis = require(osce, "Correct_Diagnosis", str, p, where)
    if not diagnosis.strip():
        raise CaseFileError(
            where["file"], where["line"], "empty diagnosis", field=f"{p}.Correct_Diagnosis"
        )

    ros = _texts(actor.get("Review_of_Systems"))
    hpi = history.strip() + ("" if not ros else " Review of systems: " + " ".join(ros))
    medications: list[str] = []
    for k in ("Current_Medications", "Medications", "Drug_History"):
        medications.extend(_texts(actor.get(k)))
    profile = PatientProfile(
        demographics=parse_demographics(demo_text, history),
        chief_complaint=primary.strip(),
        history_of_present_illness=hpi,
        symptoms=[Symptom(name=s.strip()) for s in [primary, *map(str, secondary)] if s.strip()],
        past_history=_texts(actor.get("Past_Medical_History")),
        medications=medications,
        allergies=_texts(actor.get("Allergies")),
        family_history=_texts(actor.get("Family_History")),
        social_history=_texts(actor.get("Social_History")),
    )
    exams = _physical(findings)
    tests = _tests(results)
    key_exams: list[str] = []
    mapping: list[tuple[str, bool]] = []
    for name, matched, recs in tests:
        exams.extend(recs)
        mapping.append((name, matched))
        if name not in key_exams:
            key_exams.append(name)
    stem = os.path.splitext(os.path.basename(where["file"]))[0]
    case = Case(
        id=f"agentclinic-{stem}-{number:04d}",
        profile=profile,
        exams=exams,
        key_exams=key_exams,
        diagnosis=Diagnosis(name=diagnosis.strip()),
        source="agentclinic",
    )
    return case, mapping


def _iter(path: str):
    name = os.fspath(path)
    try:
        fh = open(name, "rb")
    except OSError as exc:
        raise CaseFileError(name, None, f"cannot open: {exc}") from None
    with fh:
        number = 0
        for line, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise CaseFileError(name, line, f"malformed JSON: {exc}") from None
            number += 1
            yield _case(obj, {"file": name, "line": line}, number)


def load(path: str) -> list[Case]:
    """Every case of an AgentClinic OSCE JSONL file (e.g. `agentclinic/medqa.jsonl`)."""
    return [case for case, _ in _iter(path)]


def mapping_report(path: str) -> dict[str, Any]:
    """How many of the file's test names map onto the catalogue (per mention and distinct)."""
    mentions = [m for _, mapping in _iter(path) for m in mapping]
    distinct = {n: ok for n, ok in mentions}
    return {
        "tests": len(mentions),
        "mapped": sum(ok for _, ok in mentions),
        "distinct": len(distinct),
        "distinct_mapped": sum(distinct.values()),
        "unmapped": sorted(n for n, ok in distinct.items() if not ok),
    }
