"""Synthea CSV export (patients, encounters, conditions, observations, medications, allergies).

The same case per patient as `cases.loaders.fhir` (see its docstring for the rules): the index
encounter is the one of the most recent non-resolved disorder (else the most recent disorder),
the primary diagnosis is the encounter's reason when it is one of its disorders, else the first
disorder recorded in it. CSV conditions carry dates only (no times), so "earliest onset" within an
encounter is the file order. Observations are single values (no panels, no reference ranges):
the catalogue's reference range is used when the UCUM unit agrees.
"""

from __future__ import annotations

import os
from datetime import date, datetime

from cases.catalogue import Entry, default_catalogue
from cases.jsonl import CaseFileError
from cases.loaders._common import canonical, find_table, read_csv, reference_for
from cases.loaders.fhir import _CATEGORY, _SOCIAL_WORDS, _TAG, _UCUM, LOINC
from protocols.case import (
    Case,
    Demographics,
    Diagnosis,
    ExamRecord,
    PatientProfile,
    Symptom,
)

__all__ = ["load_csv"]


def _dt(text: str, path: str, line: int, field: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CaseFileError(path, line, f"bad date {text!r}", field=field) from None
    return t.replace(tzinfo=None)


def _entry(code: str, description: str) -> Entry | None:
    cat = default_catalogue()
    name = LOINC.get(code)
    if name is not None and name in cat:
        entry = cat.get(name)
    else:
        entry = canonical(description.split("[")[0]) or canonical(description)
    return None if entry is None or entry.is_panel else entry


def load_csv(directory: str) -> list[Case]:
    """One case per patient with at least one disorder, from a Synthea `csv/` folder."""
    d = os.fspath(directory)
    p = find_table(d, ["patients.csv"])
    patients = {
        r["Id"]: r for _, r in read_csv(p, ["Id", "BIRTHDATE", "GENDER", "RACE", "ETHNICITY"])
    }
    p = find_table(d, ["encounters.csv"])
    encounters: dict[str, tuple[datetime, datetime, dict]] = {}
    for line, r in read_csv(p, ["Id", "START", "STOP", "PATIENT", "DESCRIPTION"]):
        start = _dt(r["START"], p, line, "START")
        stop = _dt(r["STOP"], p, line, "STOP") if r["STOP"].strip() else start
        encounters[r["Id"]] = (start, stop, r)
    p = find_table(d, ["conditions.csv"])
    conditions: dict[str, list[dict]] = {}
    for line, r in read_csv(p, ["START", "STOP", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"]):
        r = dict(r)
        r["__start"] = _dt(r["START"], p, line, "START").date()
        r["__stop"] = _dt(r["STOP"], p, line, "STOP").date() if r["STOP"].strip() else None
        r["__line"] = line
        conditions.setdefault(r["PATIENT"], []).append(r)
    p = find_table(d, ["observations.csv"])
    observations: dict[str, list[tuple[datetime, dict]]] = {}
    tobacco: dict[str, list[tuple[datetime, str]]] = {}
    need = ["DATE", "PATIENT", "ENCOUNTER", "CATEGORY", "CODE", "DESCRIPTION", "VALUE", "UNITS"]
    for line, r in read_csv(p, need + ["TYPE"]):
        when = _dt(r["DATE"], p, line, "DATE")
        if r["CODE"] == "72166-2":
            tobacco.setdefault(r["PATIENT"], []).append((when, r["VALUE"]))
            continue
        observations.setdefault(r["ENCOUNTER"], []).append((when, r))
    meds: dict[str, list[dict]] = {}
    p = find_table(d, ["medications.csv"])
    for line, r in read_csv(p, ["START", "STOP", "PATIENT", "DESCRIPTION"]):
        r = dict(r)
        r["__start"] = _dt(r["START"], p, line, "START")
        r["__stop"] = _dt(r["STOP"], p, line, "STOP") if r["STOP"].strip() else None
        meds.setdefault(r["PATIENT"], []).append(r)
    allergies: dict[str, list[tuple[date, str]]] = {}
    p = find_table(d, ["allergies.csv"])
    for line, r in read_csv(p, ["START", "PATIENT", "DESCRIPTION"]):
        allergies.setdefault(r["PATIENT"], []).append(
            (_dt(r["START"], p, line, "START").date(), _TAG.sub("", r["DESCRIPTION"]))
        )

    cat = default_catalogue()
    cases = []
    for pid, pat in patients.items():
        conds = conditions.get(pid, [])
        disorders = [c for c in conds if "(disorder)" in c["DESCRIPTION"]]
        if not disorders:
            continue
        active = [c for c in disorders if c["__stop"] is None]
        pool = active or disorders
        latest = max(
            pool,
            key=lambda c: (c["__start"], encounters.get(c["ENCOUNTER"], (datetime.min,))[0]),
        )
        if latest["ENCOUNTER"] not in encounters:
            raise CaseFileError(
                find_table(d, ["conditions.csv"]),
                latest["__line"],
                f"unknown encounter {latest['ENCOUNTER']}",
                field="ENCOUNTER",
            )
        start, stop, enc = encounters[latest["ENCOUNTER"]]
        same = [c for c in disorders if c["ENCOUNTER"] == latest["ENCOUNTER"]]
        reason = enc.get("REASONDESCRIPTION", "")
        primary = next((c for c in same if c["DESCRIPTION"] == reason), same[0])
        in_enc = [c for c in conds if c["ENCOUNTER"] == latest["ENCOUNTER"]]
        symptoms = [
            Symptom(name=_TAG.sub("", c["DESCRIPTION"]))
            for c in in_enc
            if "(finding)" in c["DESCRIPTION"] and not _SOCIAL_WORDS.search(c["DESCRIPTION"])
        ]
        past = [
            _TAG.sub("", c["DESCRIPTION"])
            + (" (resolved)" if c["__stop"] is not None and c["__stop"] <= start.date() else "")
            for c in sorted(disorders, key=lambda c: c["__start"])
            if c["__start"] < start.date() and c is not primary
        ]
        social = [
            _TAG.sub("", c["DESCRIPTION"])
            for c in conds
            if "(disorder)" not in c["DESCRIPTION"]
            and _SOCIAL_WORDS.search(c["DESCRIPTION"])
            and c["__start"] <= stop.date()
            and (c["__stop"] is None or c["__stop"] > start.date())
        ]
        smoke = [(t, v) for t, v in tobacco.get(pid, []) if t <= stop]
        if smoke:
            social.insert(0, "Tobacco: " + _TAG.sub("", max(smoke)[1]))
        exams: list[ExamRecord] = []
        key_exams: list[str] = []
        for when, r in sorted(observations.get(latest["ENCOUNTER"], []), key=lambda x: x[0]):
            entry = _entry(r["CODE"], r["DESCRIPTION"])
            unit = r["UNITS"].strip()
            value = None
            if r.get("TYPE") == "numeric":
                try:
                    value = float(r["VALUE"])
                except ValueError:
                    value = None
            u = _UCUM.get(unit, unit)
            if entry is not None and u == "/min" and entry.unit.endswith("/min"):
                u = entry.unit
            category = entry.category if entry else _CATEGORY.get(r["CATEGORY"], "other")
            exams.append(
                ExamRecord(
                    name=entry.name if entry else r["DESCRIPTION"],
                    category=category,
                    result=f"{r['VALUE']} {unit}".strip()
                    if value is not None
                    else _TAG.sub("", r["VALUE"]),
                    value=value,
                    unit=unit,
                    reference=reference_for(entry, u),
                    time_offset_h=round((when - start).total_seconds() / 3600, 2),
                )
            )
            if (
                entry is not None
                and entry.name in cat
                and category in ("lab", "microbiology", "imaging")
                and entry.name not in key_exams
            ):
                key_exams.append(entry.name)
        medications = []
        for m in meds.get(pid, []):
            if m["__start"] <= stop and (m["__stop"] is None or m["__stop"] > start):
                if m["DESCRIPTION"] not in medications:
                    medications.append(m["DESCRIPTION"])
        born = date.fromisoformat(pat["BIRTHDATE"][:10])
        age = start.year - born.year - ((start.month, start.day) < (born.month, born.day))
        complaint = symptoms[0].name if symptoms else _TAG.sub("", enc["DESCRIPTION"])
        cases.append(
            Case(
                id=f"synthea-{pid}",
                profile=PatientProfile(
                    demographics=Demographics(
                        age=max(0, age),
                        sex={"F": "female", "M": "male"}.get(pat["GENDER"].strip(), "other"),
                        ethnicity=", ".join(x for x in (pat["RACE"], pat["ETHNICITY"]) if x),
                    ),
                    chief_complaint=complaint,
                    symptoms=symptoms,
                    past_history=past,
                    medications=medications,
                    allergies=[a for t, a in allergies.get(pid, []) if t <= stop.date()],
                    social_history=social,
                ),
                exams=exams,
                key_exams=key_exams,
                diagnosis=Diagnosis(
                    name=_TAG.sub("", primary["DESCRIPTION"]),
                    synonyms=[f"SNOMED CT {primary['CODE']}"],
                ),
                source="synthea",
            )
        )
    return cases
