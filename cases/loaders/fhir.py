"""FHIR R4 bundles (e.g. Synthea's) to `protocols.Case`: one case per bundle (one patient).

A patient's bundle holds a lifetime of encounters; a diagnostic case is one presentation, so the
case is the patient's *index encounter*, chosen through its diagnosis:

- the primary condition: among Conditions that are disorders (SNOMED semantic tag "(disorder)";
  Synthea also records social findings and situations as conditions, which are not diagnoses),
  the encounter of the most recent one that is not resolved/inactive/in remission (if every
  disorder is resolved, the most recent disorder); within that encounter, the disorder named by
  the encounter's `reasonCode`, else the earliest-onset disorder of the encounter (the presenting
  diagnosis rather than a later complication).
- diagnosis: the condition's display without the semantic tag; ICD-10(-CM) code if the condition
  has one; the SNOMED CT code kept as the synonym "SNOMED CT <code>".
- profile: age in whole years at the encounter start from `birthDate`, `gender`, US-core race and
  ethnicity; symptoms = finding-type Conditions of the index encounter; chief complaint = the
  first symptom, else the encounter's reason when it is not the diagnosis, else its type;
  past history = disorders with onset before the encounter; social history = smoking status and
  still-active social findings; medications = MedicationRequests authored before the encounter
  end and not stopped; allergies = AllergyIntolerance.
- exams: the index encounter's Observations (a blood-pressure panel becomes one record per
  component), named by LOINC code or display through the catalogue, else by their display;
  values, units and reference ranges as recorded; category vital-signs/exam -> physical,
  laboratory -> lab, imaging -> imaging, others -> other; time_offset_h from the encounter start.
  DiagnosticReports of the encounter name the panels (CBC, blood culture ...): their catalogue
  names are key exams, with the lab/microbiology/imaging observations not in a report.
  Clinical notes (DiagnosticReport presentedForm) are not read: they name the diagnosis.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime
from typing import Any

from cases.catalogue import Entry, default_catalogue
from cases.jsonl import CaseFileError
from cases.loaders._common import canonical, reference_for
from protocols.case import (
    Case,
    Demographics,
    Diagnosis,
    ExamRecord,
    PatientProfile,
    ReferenceRange,
    Symptom,
)

__all__ = ["load_bundle", "load_bundles", "LOINC"]

# LOINC code -> catalogue canonical name (common vital signs, labs and panels)
LOINC: dict[str, str] = {
    "8310-5": "temperature",
    "8867-4": "heart rate",
    "9279-1": "respiratory rate",
    "2708-6": "oxygen saturation",
    "59408-5": "oxygen saturation",
    "8480-6": "systolic blood pressure",
    "8462-4": "diastolic blood pressure",
    "85354-9": "blood pressure",
    "39156-5": "body mass index",
    "718-7": "hemoglobin",
    "4544-3": "hematocrit",
    "6690-2": "white blood cell count",
    "777-3": "platelet count",
    "787-2": "mean corpuscular volume",
    "785-6": "mean corpuscular hemoglobin",
    "786-4": "MCHC",
    "789-8": "red blood cell count",
    "21000-5": "red cell distribution width",
    "58410-2": "complete blood count",
    "57021-8": "complete blood count",
    "2339-0": "glucose",
    "2345-7": "glucose",
    "2160-0": "creatinine",
    "38483-4": "creatinine",
    "6299-2": "blood urea nitrogen",
    "3094-0": "blood urea nitrogen",
    "2951-2": "sodium",
    "2947-0": "sodium",
    "2823-3": "potassium",
    "6298-4": "potassium",
    "2075-0": "chloride",
    "2069-3": "chloride",
    "2028-9": "bicarbonate",
    "20565-8": "bicarbonate",
    "17861-6": "calcium",
    "49765-1": "calcium",
    "51990-0": "basic metabolic panel",
    "24323-8": "comprehensive metabolic panel",
    "4548-4": "hemoglobin A1c",
    "2093-3": "total cholesterol",
    "2571-8": "triglycerides",
    "18262-6": "LDL cholesterol",
    "2085-9": "HDL cholesterol",
    "57698-3": "lipid panel",
    "1742-6": "alanine aminotransferase",
    "1920-8": "aspartate aminotransferase",
    "6768-6": "alkaline phosphatase",
    "1975-2": "total bilirubin",
    "1751-7": "albumin",
    "2885-2": "total protein",
    "32693-4": "lactate",
    "2524-7": "lactate",
    "600-7": "blood culture",
    "630-4": "urine culture",
    "94531-1": "SARS-CoV-2 PCR",
    "80381-7": "influenza rapid test",
    "44261-6": "PHQ-9 score",
    "70274-6": "GAD-7 score",
    "24356-8": "urinalysis",
    "5767-9": "urinalysis",
}
_CATEGORY = {
    "vital-signs": "physical",
    "exam": "physical",
    "laboratory": "lab",
    "imaging": "imaging",
    "procedure": "other",
    "survey": "other",
}
_TAG = re.compile(
    r"\s*\((disorder|finding|situation|procedure|morphologic abnormality|qualifier value)\)\s*$"
)
_UCUM = {"Cel": "C", "mm[Hg]": "mmHg", "10*3/uL": "10^9/L", "10*6/uL": "10^12/L", "kg/m2": "kg/m2"}
_INACTIVE = {"resolved", "inactive", "remission"}
_SOCIAL_WORDS = re.compile(
    r"employ|education|housing|transport|social|stress|income|insurance|labor force|"
    r"partner|abuse|prison|refugee|violence|misuses|criminal|migrant|reports of",
    re.IGNORECASE,
)


class _Ctx:
    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, message: str, record: str = "", field: str = "") -> CaseFileError:
        return CaseFileError(self.path, None, message, record=record, field=field)


def _get(ctx: _Ctx, res: dict, key: str, kind: type | tuple, record: str, default: Any = ...):
    if key not in res:
        if default is not ...:
            return default
        raise ctx.error("missing field", record, key)
    value = res[key]
    if not isinstance(value, kind):
        raise ctx.error(f"wrong type {type(value).__name__}", record, key)
    return value


def _when(ctx: _Ctx, text: Any, record: str, field: str) -> datetime:
    if not isinstance(text, str):
        raise ctx.error(f"wrong type {type(text).__name__}", record, field)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ctx.error(f"bad date {text!r}", record, field) from None
    return t.replace(tzinfo=None) if t.tzinfo is None else t


def _naive(t: datetime) -> datetime:
    """Wall-clock time without the zone (ages and offsets need no zone arithmetic)."""
    return t.replace(tzinfo=None)


def _coding(concept: Any) -> list[dict]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding", []) if isinstance(c, dict)]


def _display(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    for c in _coding(concept):
        if c.get("display"):
            return str(c["display"])
    return str(concept.get("text", ""))


def _code(concept: Any, system_part: str) -> str:
    for c in _coding(concept):
        if system_part in str(c.get("system", "")):
            return str(c.get("code", ""))
    return ""


def _status(res: dict) -> str:
    codes = _coding(res.get("clinicalStatus"))
    return str(codes[0].get("code", "")) if codes else ""


def _ref(res: dict, key: str) -> str:
    r = res.get(key)
    return str(r.get("reference", "")) if isinstance(r, dict) else ""


def _exam_entry(obs: dict) -> Entry | None:
    cat = default_catalogue()
    for c in _coding(obs.get("code")):
        name = LOINC.get(str(c.get("code", ""))) if "loinc" in str(c.get("system", "")) else None
        if name is not None and name in cat:
            return cat.get(name)
    text = _display(obs.get("code"))
    # "Hemoglobin [Mass/volume] in Blood" -> "Hemoglobin"
    for candidate in (text, re.sub(r"\s*\[[^\]]*\].*$", "", text)):
        entry = canonical(candidate) if candidate else None
        if entry is not None:
            return entry
    return None


def _value(ctx: _Ctx, obs: dict, record: str) -> tuple[str, float | None, str]:
    if "valueQuantity" in obs:
        q = _get(ctx, obs, "valueQuantity", dict, record)
        v = q.get("value")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ctx.error(f"wrong type {type(v).__name__}", record, "valueQuantity.value")
        unit = str(q.get("unit") or q.get("code") or "")
        return f"{v:g} {unit}".strip(), float(v), unit
    if "valueCodeableConcept" in obs:
        return _TAG.sub("", _display(obs["valueCodeableConcept"])), None, ""
    for key in ("valueString", "valueBoolean", "valueInteger"):
        if key in obs:
            v = obs[key]
            return str(v), float(v) if key == "valueInteger" else None, ""
    return "", None, ""


def _reference(obs: dict) -> ReferenceRange | None:
    ranges = obs.get("referenceRange")
    if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], dict):
        return None
    r = ranges[0]
    low = r.get("low", {}).get("value") if isinstance(r.get("low"), dict) else None
    high = r.get("high", {}).get("value") if isinstance(r.get("high"), dict) else None
    return ReferenceRange(low=low, high=high, text=str(r.get("text", "")))


def _ref_or_catalogue(res: dict, entry: Entry | None, unit: str) -> ReferenceRange | None:
    """The resource's own reference range, else the catalogue's when the (UCUM) unit agrees."""
    ref = _reference(res)
    if ref is not None or entry is None:
        return ref
    u = _UCUM.get(unit, unit)
    if u == "/min" and entry.unit.endswith("/min"):
        u = entry.unit
    return reference_for(entry, u)


def _observation(ctx: _Ctx, obs: dict, start: datetime, record: str) -> list[ExamRecord]:
    cats = [str(c.get("code", "")) for cc in obs.get("category", []) for c in _coding(cc)]
    category = next((_CATEGORY[c] for c in cats if c in _CATEGORY), "other")
    when = obs.get("effectiveDateTime") or obs.get("issued")
    offset = 0.0
    if when is not None:
        offset = (_naive(_when(ctx, when, record, "effectiveDateTime")) - start).total_seconds()
        offset = round(offset / 3600, 2)
    if "component" in obs:
        comps = _get(ctx, obs, "component", list, record)
        out = []
        for i, comp in enumerate(comps):
            if not isinstance(comp, dict):
                raise ctx.error("expected an object", record, f"component[{i}]")
            text, value, unit = _value(ctx, comp, f"{record} component[{i}]")
            entry = _exam_entry(comp)
            out.append(
                ExamRecord(
                    name=entry.name if entry else _display(comp.get("code")),
                    category=entry.category if entry else category,
                    result=text,
                    value=value,
                    unit=unit,
                    reference=_ref_or_catalogue(comp, entry, unit),
                    time_offset_h=offset,
                )
            )
        return out
    text, value, unit = _value(ctx, obs, record)
    entry = _exam_entry(obs)
    if entry is not None and entry.is_panel:
        entry = None  # a panel observation with a single value: keep the source's name
    return [
        ExamRecord(
            name=entry.name if entry else _display(obs.get("code")),
            category=entry.category if entry else category,
            result=text,
            value=value,
            unit=unit,
            reference=_ref_or_catalogue(obs, entry, unit),
            time_offset_h=offset,
        )
    ]


def _age(born: date, at: datetime) -> int:
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


def _ext_text(patient: dict, suffix: str) -> str:
    for ext in patient.get("extension", []):
        if isinstance(ext, dict) and str(ext.get("url", "")).endswith(suffix):
            for sub in ext.get("extension", []):
                if isinstance(sub, dict) and sub.get("url") == "text":
                    return str(sub.get("valueString", ""))
    return ""


def load_bundle(path: str) -> list[Case]:
    """The case of one FHIR R4 Bundle JSON file ([] if the patient has no disorder)."""
    name = os.fspath(path)
    ctx = _Ctx(name)
    try:
        with open(name, encoding="utf-8") as fh:
            bundle = json.load(fh)
    except OSError as exc:
        raise CaseFileError(name, None, f"cannot open: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CaseFileError(name, exc.lineno, f"malformed JSON: {exc.msg}") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ctx.error("not a FHIR Bundle", field="resourceType")
    entries = _get(ctx, bundle, "entry", list, "Bundle")
    by_type: dict[str, list[tuple[str, dict]]] = {}
    for i, e in enumerate(entries):
        rec = f"entry[{i}]"
        if not isinstance(e, dict):
            raise ctx.error("expected an object", rec)
        res = _get(ctx, e, "resource", dict, rec)
        rtype = _get(ctx, res, "resourceType", str, rec)
        rec = f"entry[{i}] {rtype}/{res.get('id', '?')}"
        full = str(e.get("fullUrl") or f"{rtype}/{res.get('id', '')}")
        by_type.setdefault(rtype, []).append((rec, res))
        res["__full"] = full
        res["__rec"] = rec
    patients = by_type.get("Patient", [])
    if len(patients) != 1:
        raise ctx.error(f"expected one Patient, found {len(patients)}", "Bundle", "entry")
    prec, patient = patients[0]
    birth_text = _get(ctx, patient, "birthDate", str, prec)
    try:
        born = date.fromisoformat(birth_text[:10])
    except ValueError:
        raise ctx.error(f"bad date {birth_text!r}", prec, "birthDate") from None
    gender = str(_get(ctx, patient, "gender", str, prec, "unknown"))

    encounters: dict[str, dict] = {}
    for rec, enc in by_type.get("Encounter", []):
        period = _get(ctx, enc, "period", dict, rec)
        enc["__start"] = _naive(_when(ctx, period.get("start"), rec, "period.start"))
        end = period.get("end")
        enc["__end"] = _naive(_when(ctx, end, rec, "period.end")) if end else enc["__start"]
        encounters[enc["__full"]] = enc
        encounters[f"Encounter/{enc.get('id', '')}"] = enc

    conditions = []
    for rec, cond in by_type.get("Condition", []):
        _get(ctx, cond, "code", dict, rec)
        onset = cond.get("onsetDateTime") or cond.get("recordedDate")
        if onset is None:
            raise ctx.error("missing field", rec, "onsetDateTime")
        cond["__onset"] = _naive(_when(ctx, onset, rec, "onsetDateTime"))
        abate = cond.get("abatementDateTime")
        cond["__abate"] = _naive(_when(ctx, abate, rec, "abatementDateTime")) if abate else None
        conditions.append(cond)
    disorders = [c for c in conditions if "(disorder)" in _display(c["code"])] or conditions
    if not disorders:
        return []
    active = [c for c in disorders if _status(c) not in _INACTIVE]
    latest = max(active or disorders, key=lambda c: c["__onset"])
    enc = encounters.get(_ref(latest, "encounter"))
    if enc is None:
        start = end = latest["__onset"]
        reasons: list[str] = []
        enc_type = ""
        same = [latest]
    else:
        start, end = enc["__start"], enc["__end"]
        reasons = [_display(r) for r in enc.get("reasonCode", [])]
        enc_type = _TAG.sub("", _display((enc.get("type") or [{}])[0]))
        same = [c for c in disorders if encounters.get(_ref(c, "encounter")) is enc]
    by_reason = [c for c in same if _display(c["code"]) in reasons]
    primary = by_reason[0] if by_reason else min(same, key=lambda c: c["__onset"])
    dx_name = _TAG.sub("", _display(primary["code"]))
    icd10 = _code(primary["code"], "icd-10")
    snomed = _code(primary["code"], "snomed")

    in_encounter = [
        c for c in conditions if enc is not None and encounters.get(_ref(c, "encounter")) is enc
    ]
    symptoms = [
        Symptom(name=_TAG.sub("", _display(c["code"])))
        for c in sorted(in_encounter, key=lambda c: c["__onset"])
        if "(finding)" in _display(c["code"]) and not _SOCIAL_WORDS.search(_display(c["code"]))
    ]
    past = [
        _TAG.sub("", _display(c["code"]))
        + (" (resolved)" if c["__abate"] is not None and c["__abate"] <= start else "")
        for c in sorted(disorders, key=lambda c: c["__onset"])
        if c["__onset"] < start and c is not primary
    ]
    social = [
        _TAG.sub("", _display(c["code"]))
        for c in conditions
        if "(disorder)" not in _display(c["code"])
        and _SOCIAL_WORDS.search(_display(c["code"]))
        and c["__onset"] <= end
        and (c["__abate"] is None or c["__abate"] > start)
    ]
    exams: list[ExamRecord] = []
    in_report: set[str] = set()
    reports: list[tuple[Entry, list[str]]] = []  # qualitative exams reported by parts
    by_url: dict[str, list[ExamRecord]] = {}
    key_exams: list[str] = []
    for _rec, rep in by_type.get("DiagnosticReport", []):
        if enc is None or encounters.get(_ref(rep, "encounter")) is not enc:
            continue
        results = rep.get("result", [])
        if not results:
            continue  # notes without results: clinical text that names the diagnosis
        refs = [str(r.get("reference", "")) for r in results if isinstance(r, dict)]
        in_report |= set(refs)
        entry = _exam_entry(rep)
        if entry is not None and entry.category != "other" and entry.name not in key_exams:
            key_exams.append(entry.name)
            if not entry.is_panel:
                reports.append((entry, refs))
    smoking = []
    for rec, obs in by_type.get("Observation", []):
        if enc is None or encounters.get(_ref(obs, "encounter")) is not enc:
            if _code(obs.get("code"), "loinc") == "72166-2" and "valueCodeableConcept" in obs:
                smoking.append((obs.get("effectiveDateTime", ""), obs))
            continue
        _get(ctx, obs, "code", dict, rec)
        records = _observation(ctx, obs, start, rec)
        if _code(obs.get("code"), "loinc") == "72166-2":
            smoking.append((obs.get("effectiveDateTime", ""), obs))
            continue
        exams.extend(records)
        by_url[obs["__full"]] = records
        if obs["__full"] not in in_report:
            for r in records:
                if (
                    r.category in ("lab", "microbiology", "imaging")
                    and r.name in default_catalogue()
                    and r.name not in key_exams
                ):
                    key_exams.append(r.name)
    for entry, refs in reports:
        # "influenza rapid test" reported as flu A + flu B observations: one record by its name
        parts = [r for ref in refs for r in by_url.get(ref, [])]
        if parts and all(r.name != entry.name for r in parts):
            exams.append(
                ExamRecord(
                    name=entry.name,
                    category=entry.category,
                    result="; ".join(f"{r.name}: {r.result}" for r in parts),
                    time_offset_h=min(r.time_offset_h for r in parts),
                )
            )
    before = [
        (t, o)
        for t, o in smoking
        if t and _naive(_when(ctx, t, o["__rec"], "effectiveDateTime")) <= end
    ]
    if before:
        social.insert(
            0,
            "Tobacco: "
            + _TAG.sub("", _display(max(before, key=lambda x: x[0])[1]["valueCodeableConcept"])),
        )

    medications = []
    for rec, med in by_type.get("MedicationRequest", []):
        authored = med.get("authoredOn")
        if authored and _naive(_when(ctx, authored, rec, "authoredOn")) > end:
            continue
        if med.get("status") in ("stopped", "cancelled", "entered-in-error"):
            continue
        text = _display(med.get("medicationCodeableConcept"))
        if text and text not in medications:
            medications.append(text)
    allergies = [
        _TAG.sub("", _display(a.get("code"))) for _, a in by_type.get("AllergyIntolerance", [])
    ]
    reason = next((r for r in reasons if _TAG.sub("", r) != dx_name), "")
    complaint = symptoms[0].name if symptoms else (_TAG.sub("", reason) or enc_type)
    patient_id = str(patient.get("id", os.path.splitext(os.path.basename(name))[0]))
    return [
        Case(
            id=f"fhir-{patient_id}",
            profile=PatientProfile(
                demographics=Demographics(
                    age=max(0, _age(born, start)),
                    sex=gender if gender in ("male", "female") else "other",
                    ethnicity=", ".join(
                        t
                        for t in (
                            _ext_text(patient, "us-core-race"),
                            _ext_text(patient, "us-core-ethnicity"),
                        )
                        if t
                    ),
                ),
                chief_complaint=complaint,
                symptoms=symptoms,
                past_history=past,
                medications=medications,
                allergies=[a for a in allergies if a],
                social_history=social,
            ),
            exams=sorted(exams, key=lambda e: e.time_offset_h),
            key_exams=key_exams,
            diagnosis=Diagnosis(
                name=dx_name,
                icd10=icd10,
                synonyms=[f"SNOMED CT {snomed}"] if snomed else [],
            ),
            source="fhir",
        )
    ]


def load_bundles(directory: str) -> list[Case]:
    """The cases of every `*.json` bundle in a folder, in file-name order."""
    d = os.fspath(directory)
    out: list[Case] = []
    for fname in sorted(os.listdir(d)):
        if fname.endswith(".json"):
            out.extend(load_bundle(os.path.join(d, fname)))
    return out
