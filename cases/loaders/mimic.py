"""MIMIC-III / MIMIC-IV tables to DiagGym-style cases: profile + the exam chain of the first 24 h.

One case per admission that has a primary diagnosis (SEQ_NUM 1) and at least one lab or
microbiology result in its window. The window runs from presentation to 24 h after the admission
time; presentation is the earliest of the ED registration, the admission time and the first
result charted to this admission in the 12 h before admission (ED work-up when the ED times are
missing); `time_offset_h` is hours from presentation. Labs become one record each (rows sharing
a chart time form one draw), named by the catalogue where the lab's label matches, taking its
fluid into account ("Glucose" in urine is "urine glucose", never blood glucose), else `"<LABEL>"`
(blood) or `"<LABEL>, <fluid>"`, with category "lab". Values are the source's numbers and units;
the reference range is the source's (MIMIC-IV `ref_range_*`) or else the catalogue's when the
unit is the catalogue's; the abnormal flag is in the result text. Specimen/ventilator rows
("SPECIMEN TYPE", "Intubated", "PEEP", tube "Hold" rows ...) are not results and are skipped.
Microbiology: one record per specimen and chart time (organisms and susceptibilities joined, "no
growth" when no organism), named by the catalogue ("BLOOD CULTURE" -> "blood culture", "URINE" ->
"urine culture"), else `"<specimen> culture"`, category "microbiology".

Diagnosis: the SEQ_NUM 1 code's long title. ICD-9 codes are kept as a synonym
`"ICD-9-CM <code>"` with `icd10=""` (no ICD-9 -> ICD-10 mapping offline); MIMIC-IV ICD-10 codes
go to `icd10` with the dot restored ("A419" -> "A41.9").

MIMIC-III demo caveat (see the data's NOTE.md): ADMITTIME/EDREGTIME/DOB were re-saved with
two-digit years. Month, day and time are intact, and lab/micro chart times are intact, so the
admission year is the century that puts the admission nearest the admission's own intact chart
times; age is the whole years from DOB to admission taken modulo 100 (two-digit years), and an
age of 0 on a non-NEWBORN admission is MIMIC's >89 shift (DOB 300 years back), reported as 90.
ISO DOBs (pre-1900 ones survived the re-save) are used directly, with ages >= 300 -> 90.
"""

from __future__ import annotations

import os
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from cases.catalogue import Entry, default_catalogue
from cases.jsonl import CaseFileError
from cases.loaders._common import canonical, find_table, read_csv, record, reference_for
from protocols.case import (
    Case,
    Demographics,
    Diagnosis,
    ExamRecord,
    PatientProfile,
    ReferenceRange,
)

__all__ = ["PRE_ADMISSION_H", "WINDOW_H", "load_mimic_iii", "load_mimic_iv", "summary"]

WINDOW_H = 24.0
PRE_ADMISSION_H = 12.0
_SEX = {"F": "female", "M": "male"}


class _Adm(NamedTuple):
    hadm: str
    subject: str
    admit: datetime
    present: datetime
    complaint: str
    ethnicity: str
    age: int
    sex: str


class _Lab(NamedTuple):
    time: datetime
    itemid: str
    value: str
    valuenum: float | None
    unit: str
    flag: str
    low: float | None
    high: float | None
    comment: str


class _Micro(NamedTuple):
    time: datetime
    spec: str
    test: str
    org: str
    ab: str
    interp: str
    date_only: bool = False  # no chart time, only the chart date


# --- parsing helpers -----------------------------------------------------------------------------

_ISO = "%Y-%m-%d %H:%M:%S"


def _iso(text: str, path: str, line: int, field: str) -> datetime:
    text = text.strip()
    for fmt in (_ISO, "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise CaseFileError(path, line, f"bad timestamp {text!r}", field=field)


def _two_digit(text: str, path: str, line: int, field: str) -> tuple[int, int, int, int, int]:
    """("10/23/64 21:09") -> (yy, month, day, hour, minute)."""
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{2}) (\d{1,2}):(\d{2})", text.strip())
    if m is None:
        raise CaseFileError(path, line, f"bad timestamp {text!r}", field=field)
    mo, d, yy, h, mi = (int(g) for g in m.groups())
    return yy, mo, d, h, mi


def _resolve(text: str, anchor: datetime | None, path: str, line: int, field: str) -> datetime:
    """A MIMIC-III timestamp: ISO as is; a two-digit year in the century nearest `anchor`."""
    if re.match(r"\d{4}-", text.strip()):
        return _iso(text, path, line, field)
    yy, mo, d, h, mi = _two_digit(text, path, line, field)
    candidates = []
    for century in range(1800, 2400, 100):
        try:
            candidates.append(datetime(century + yy, mo, d, h, mi))
        except ValueError:
            continue
    if not candidates:
        raise CaseFileError(path, line, f"impossible date {text!r}", field=field)
    if anchor is None:
        return candidates[0]
    return min(candidates, key=lambda t: abs((t - anchor).total_seconds()))


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value else None  # NaN -> None


def _years(born: datetime, at: datetime) -> int:
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


_BLOOD_SUFFIX = re.compile(r",\s*(whole blood|calculated)\s*$", re.IGNORECASE)
# rows of LABEVENTS that describe the specimen or the ventilator, not a result
_NOT_RESULTS = re.compile(
    r"^(specimen type|intubated|ventilator|tidal volume|peep|oxygen|ventilation rate|required o2|"
    r"o2 flow|temperature|length of urine collection|.* hold.*)$",
    re.IGNORECASE,
)


def _fluid_name(label: str, fluid: str) -> tuple[Entry | None, str]:
    fl = fluid.strip().lower()
    if fl in ("", "blood"):
        entry = canonical(label)
        if entry is None:
            # "Potassium, Whole Blood", "Hematocrit, Calculated": the same analyte
            entry = canonical(_BLOOD_SUFFIX.sub("", label))
        return entry, label
    short = {"cerebrospinal fluid (csf)": "CSF", "csf": "CSF", "urine": "urine"}.get(fl)
    entry = canonical(f"{short} {label}") if short else None
    if entry is not None and entry.category != "lab" and entry.category != "microbiology":
        entry = None
    return entry, f"{label}, {fluid.strip().lower()}"


def _icd10_dotted(code: str) -> str:
    code = code.strip().upper()
    return code if len(code) <= 3 or "." in code else f"{code[:3]}.{code[3:]}"


# --- building cases ------------------------------------------------------------------------------


def _lab_record(lab: _Lab, item: tuple[str, str, str], offset: float) -> ExamRecord:
    label, fluid, _category = item
    entry, raw_name = _fluid_name(label, fluid)
    name = entry.name if entry is not None else raw_name
    unit = lab.unit.strip()
    value = lab.valuenum if lab.valuenum is not None else _float(lab.value)
    if lab.low is not None or lab.high is not None:
        reference: ReferenceRange | None = ReferenceRange(low=lab.low, high=lab.high)
    else:
        reference = reference_for(entry, unit)
    text = lab.value.strip() or "(no value)"
    if unit:
        text += f" {unit}"
    if lab.flag.strip():
        text += f" [{lab.flag.strip()}]"
    if lab.comment.strip() and lab.comment.strip() != "NaN":
        text += f" ({lab.comment.strip()})"
    return record(
        name,
        entry.category if entry is not None else "lab",
        text,
        value=value,
        unit=unit,
        reference=reference,
        time_offset_h=round(offset, 2),
    )


def _micro_records(micro: list[_Micro], present: datetime) -> list[ExamRecord]:
    groups: dict[tuple[datetime, str], list[_Micro]] = defaultdict(list)
    for m in micro:
        groups[(m.time, m.spec.strip())].append(m)
    out = []
    for (time, spec), rows in sorted(groups.items()):
        entry = canonical(spec)
        if entry is None or entry.category != "microbiology":
            entry = canonical(f"{spec} culture")
        if entry is not None and entry.category != "microbiology":
            entry = None
        name = entry.name if entry is not None else f"{spec.lower()} culture"
        orgs: dict[str, list[str]] = {}
        tests = sorted({r.test.strip() for r in rows if r.test.strip() and r.test != "NaN"})
        for r in rows:
            org = r.org.strip()
            if not org or org == "NaN":
                continue
            abs_ = orgs.setdefault(org, [])
            if r.ab.strip() and r.ab != "NaN":
                abs_.append(f"{r.ab.strip()} {r.interp.strip()}".strip())
        if orgs:
            parts = [
                f"{org}" + (f" (susceptibility: {', '.join(sorted(set(a)))})" if a else "")
                for org, a in orgs.items()
            ]
            text = "; ".join(parts)
        else:
            text = "no growth / no organism isolated"
        if tests:
            text = f"{', '.join(tests)}: {text}"
        out.append(
            record(
                name,
                "microbiology",
                f"{spec}: {text}",
                time_offset_h=round((time - present).total_seconds() / 3600, 2),
            )
        )
    return out


def _build(
    admissions: Iterable[_Adm],
    labs: dict[str, list[_Lab]],
    items: dict[str, tuple[str, str, str]],
    micro: dict[str, list[_Micro]],
    primary: dict[str, tuple[str, int]],
    titles: dict[tuple[str, int], tuple[str, str]],
    source: str,
) -> list[Case]:
    cases = []
    catalogue = default_catalogue()
    for adm in admissions:
        dx = primary.get(adm.hadm)
        if dx is None:
            continue
        code, version = dx
        title, short = titles.get((code, version), ("", ""))
        if not title:
            continue
        end = adm.admit + timedelta(hours=WINDOW_H)
        # ED work-up charted to this admission before ADMITTIME (ED registration time missing)
        early = [
            t
            for t in [x.time for x in labs.get(adm.hadm, [])]
            + [m.time for m in micro.get(adm.hadm, []) if not m.date_only]
            if adm.admit - timedelta(hours=PRE_ADMISSION_H) <= t < adm.present
        ]
        if early:
            adm = adm._replace(present=min(early))
        exams: list[ExamRecord] = []
        for lab in sorted(labs.get(adm.hadm, []), key=lambda x: (x.time, x.itemid)):
            if (
                adm.present <= lab.time <= end
                and lab.itemid in items
                and not _NOT_RESULTS.match(items[lab.itemid][0].strip())
            ):
                offset = (lab.time - adm.present).total_seconds() / 3600
                exams.append(_lab_record(lab, items[lab.itemid], offset))
        window = []
        for m in micro.get(adm.hadm, []):
            if m.date_only and adm.present.date() <= m.time.date() <= end.date():
                # a specimen dated but not timed: placed at presentation (or its day's start)
                window.append(m._replace(time=max(m.time, adm.present)))
            elif adm.present <= m.time <= end:
                window.append(m)
        exams.extend(_micro_records(window, adm.present))
        if not exams:
            continue
        exams.sort(key=lambda e: e.time_offset_h)
        key_exams: list[str] = []
        for e in exams:
            if e.name in catalogue and e.name not in key_exams:
                key_exams.append(e.name)
        synonyms = [short] if short and short.lower() != title.lower() else []
        if version == 9:
            synonyms.append(f"ICD-9-CM {code}")
            icd10 = ""
        else:
            icd10 = _icd10_dotted(code)
        cases.append(
            Case(
                id=f"{source}-{adm.hadm}",
                profile=PatientProfile(
                    demographics=Demographics(age=adm.age, sex=adm.sex, ethnicity=adm.ethnicity),
                    chief_complaint=adm.complaint,
                ),
                exams=exams,
                key_exams=key_exams,
                diagnosis=Diagnosis(name=title, icd10=icd10, synonyms=synonyms),
                source=source,
            )
        )
    return cases


def _labs_items_micro_dx(
    paths: dict[str, str], cols: dict[str, dict[str, str]]
) -> tuple[dict, dict, dict, dict, dict]:
    """Read the five shared tables; `cols[table][role]` names the source column of each role."""
    labs: dict[str, list[_Lab]] = defaultdict(list)
    c = cols["labevents"]
    p = paths["labevents"]
    required = [v for v in c.values() if v]
    for line, row in read_csv(p, required):
        hadm = row[c["hadm"]].strip()
        if not hadm or hadm == "NaN":
            continue  # outpatient lab, no admission
        hadm = hadm.split(".")[0]
        labs[hadm].append(
            _Lab(
                time=_iso(row[c["time"]], p, line, c["time"]),
                itemid=row[c["itemid"]].strip(),
                value=row[c["value"]],
                valuenum=_float(row[c["valuenum"]]) if c.get("valuenum") else None,
                unit=row[c["unit"]] if row[c["unit"]] != "NaN" else "",
                flag=row[c["flag"]] if row[c["flag"]] != "NaN" else "",
                low=_float(row[c["low"]]) if c.get("low") else None,
                high=_float(row[c["high"]]) if c.get("high") else None,
                comment=row[c["comment"]] if c.get("comment") else "",
            )
        )
    c = cols["d_labitems"]
    items = {
        row[c["itemid"]].strip(): (row[c["label"]], row[c["fluid"]], row[c["category"]])
        for _, row in read_csv(paths["d_labitems"], list(c.values()))
    }
    micro: dict[str, list[_Micro]] = defaultdict(list)
    c = cols["microbiologyevents"]
    p = paths["microbiologyevents"]
    for line, row in read_csv(p, [v for v in c.values() if v]):
        hadm = row[c["hadm"]].strip().split(".")[0]
        if not hadm or hadm == "NaN":
            continue
        when = row[c["time"]].strip()
        date_only = not when or when == "NaN"
        if date_only:
            when = row[c["date"]]
        micro[hadm].append(
            _Micro(
                time=_iso(when, p, line, c["time"]),
                spec=row[c["spec"]],
                test=row[c["test"]] if c.get("test") else "",
                org=row[c["org"]],
                ab=row[c["ab"]],
                interp=row[c["interp"]] if row[c["interp"]] != "NaN" else "",
                date_only=date_only,
            )
        )
    primary: dict[str, tuple[str, int]] = {}
    c = cols["diagnoses_icd"]
    p = paths["diagnoses_icd"]
    for line, row in read_csv(p, [v for v in c.values() if v]):
        seq = row[c["seq"]].strip()
        if seq.split(".")[0] != "1":
            continue
        version = 9
        if c.get("version"):
            try:
                version = int(row[c["version"]])
            except ValueError:
                raise CaseFileError(
                    p, line, f"bad ICD version {row[c['version']]!r}", field=c["version"]
                ) from None
        primary[row[c["hadm"]].strip()] = (row[c["code"]].strip(), version)
    titles: dict[tuple[str, int], tuple[str, str]] = {}
    c = cols["d_icd_diagnoses"]
    for _, row in read_csv(paths["d_icd_diagnoses"], [v for v in c.values() if v]):
        version = int(row[c["version"]]) if c.get("version") else 9
        short = row[c["short"]] if c.get("short") else ""
        titles[(row[c["code"]].strip(), version)] = (row[c["title"]], short)
    return labs, items, micro, primary, titles


# --- MIMIC-III -----------------------------------------------------------------------------------


def load_mimic_iii(directory: str) -> list[Case]:
    """Cases from a MIMIC-III (demo) folder: ADMISSIONS, PATIENTS, LABEVENTS (or the demo's
    LABEVENTS_subset_cols), D_LABITEMS, MICROBIOLOGYEVENTS, DIAGNOSES_ICD, D_ICD_DIAGNOSES."""
    d = os.fspath(directory)
    paths = {
        "admissions": find_table(d, ["ADMISSIONS.csv"]),
        "patients": find_table(d, ["PATIENTS.csv"]),
        "labevents": find_table(d, ["LABEVENTS_subset_cols.csv", "LABEVENTS.csv"]),
        "d_labitems": find_table(d, ["D_LABITEMS.csv"]),
        "microbiologyevents": find_table(d, ["MICROBIOLOGYEVENTS.csv"]),
        "diagnoses_icd": find_table(d, ["DIAGNOSES_ICD.csv"]),
        "d_icd_diagnoses": find_table(d, ["D_ICD_DIAGNOSES.csv"]),
    }
    cols = {
        "labevents": {
            "hadm": "HADM_ID",
            "itemid": "ITEMID",
            "time": "CHARTTIME",
            "value": "VALUE",
            "unit": "VALUEUOM",
            "flag": "FLAG",
        },
        "d_labitems": {
            "itemid": "ITEMID",
            "label": "LABEL",
            "fluid": "FLUID",
            "category": "CATEGORY",
        },
        "microbiologyevents": {
            "hadm": "HADM_ID",
            "time": "CHARTTIME",
            "date": "CHARTDATE",
            "spec": "SPEC_TYPE_DESC",
            "org": "ORG_NAME",
            "ab": "AB_NAME",
            "interp": "INTERPRETATION",
        },
        "diagnoses_icd": {"hadm": "HADM_ID", "seq": "SEQ_NUM", "code": "ICD9_CODE"},
        "d_icd_diagnoses": {"code": "ICD9_CODE", "title": "LONG_TITLE", "short": "SHORT_TITLE"},
    }
    labs, items, micro, primary, titles = _labs_items_micro_dx(paths, cols)
    p = paths["patients"]
    patients = {
        row["SUBJECT_ID"].strip(): (line, row["GENDER"], row["DOB"])
        for line, row in read_csv(p, ["SUBJECT_ID", "GENDER", "DOB"])
    }
    admissions = []
    pa = paths["admissions"]
    need = ["SUBJECT_ID", "HADM_ID", "ADMITTIME", "EDREGTIME", "ADMISSION_TYPE", "DIAGNOSIS"]
    for line, row in read_csv(pa, need + ["ETHNICITY"]):
        hadm = row["HADM_ID"].strip()
        times = [x.time for x in labs.get(hadm, [])] + [m.time for m in micro.get(hadm, [])]
        anchor = min(times) if times else None
        admit = _resolve(row["ADMITTIME"], anchor, pa, line, "ADMITTIME")
        present = admit
        if row["EDREGTIME"].strip():
            ed = _resolve(row["EDREGTIME"], admit, pa, line, "EDREGTIME")
            present = min(ed, admit)
        subject = row["SUBJECT_ID"].strip()
        if subject not in patients:
            raise CaseFileError(pa, line, f"unknown SUBJECT_ID {subject}", field="SUBJECT_ID")
        pline, gender, dob_text = patients[subject]
        dob = _resolve(dob_text, admit, p, pline, "DOB")
        if re.match(r"\d{4}-", dob_text.strip()):
            age = _years(dob, admit)
        else:
            # two-digit DOB year: age modulo 100, placed in the century before the admission
            dob = dob.replace(year=admit.year - (admit.year - dob.year) % 100)
            if dob > admit:
                dob = dob.replace(year=dob.year - 100)
            age = _years(dob, admit) % 100
            if age == 0 and row["ADMISSION_TYPE"].strip().upper() != "NEWBORN":
                age = 300
        if age >= 250:
            age = 90  # MIMIC shifts patients over 89 to ~300 years
        admissions.append(
            _Adm(
                hadm=hadm,
                subject=subject,
                admit=admit,
                present=present,
                complaint=row["DIAGNOSIS"].strip().lower(),
                ethnicity=row["ETHNICITY"].strip().lower(),
                age=age,
                sex=_SEX.get(gender.strip().upper(), "other"),
            )
        )
    return _build(admissions, labs, items, micro, primary, titles, "mimic-iii")


# --- MIMIC-IV ------------------------------------------------------------------------------------


def load_mimic_iv(directory: str) -> list[Case]:
    """Cases from a MIMIC-IV folder (`hosp/*.csv` or `*.csv.gz`, or the tables directly in it).

    Age = anchor_age + (admission year - anchor_year), MIMIC-IV's documented rule."""
    d = os.fspath(directory)
    if os.path.isdir(os.path.join(d, "hosp")):
        d = os.path.join(d, "hosp")
    names = [
        "admissions",
        "patients",
        "labevents",
        "d_labitems",
        "microbiologyevents",
        "diagnoses_icd",
        "d_icd_diagnoses",
    ]
    paths = {n: find_table(d, [f"{n}.csv"]) for n in names}
    cols = {
        "labevents": {
            "hadm": "hadm_id",
            "itemid": "itemid",
            "time": "charttime",
            "value": "value",
            "valuenum": "valuenum",
            "unit": "valueuom",
            "flag": "flag",
            "low": "ref_range_lower",
            "high": "ref_range_upper",
            "comment": "comments",
        },
        "d_labitems": {
            "itemid": "itemid",
            "label": "label",
            "fluid": "fluid",
            "category": "category",
        },
        "microbiologyevents": {
            "hadm": "hadm_id",
            "time": "charttime",
            "date": "chartdate",
            "spec": "spec_type_desc",
            "test": "test_name",
            "org": "org_name",
            "ab": "ab_name",
            "interp": "interpretation",
        },
        "diagnoses_icd": {
            "hadm": "hadm_id",
            "seq": "seq_num",
            "code": "icd_code",
            "version": "icd_version",
        },
        "d_icd_diagnoses": {"code": "icd_code", "version": "icd_version", "title": "long_title"},
    }
    labs, items, micro, primary, titles = _labs_items_micro_dx(paths, cols)
    p = paths["patients"]
    patients = {}
    for line, row in read_csv(p, ["subject_id", "gender", "anchor_age", "anchor_year"]):
        try:
            patients[row["subject_id"].strip()] = (
                row["gender"],
                int(row["anchor_age"]),
                int(row["anchor_year"]),
            )
        except ValueError:
            raise CaseFileError(
                p, line, "anchor_age / anchor_year not integers", field="anchor_age"
            ) from None
    admissions = []
    pa = paths["admissions"]
    for line, row in read_csv(pa, ["subject_id", "hadm_id", "admittime", "edregtime", "race"]):
        admit = _iso(row["admittime"], pa, line, "admittime")
        present = admit
        if row["edregtime"].strip() and row["edregtime"] != "NaN":
            present = min(admit, _iso(row["edregtime"], pa, line, "edregtime"))
        subject = row["subject_id"].strip()
        if subject not in patients:
            raise CaseFileError(pa, line, f"unknown subject_id {subject}", field="subject_id")
        gender, anchor_age, anchor_year = patients[subject]
        admissions.append(
            _Adm(
                hadm=row["hadm_id"].strip(),
                subject=subject,
                admit=admit,
                present=present,
                complaint="",
                ethnicity=row["race"].strip().lower(),
                age=anchor_age + admit.year - anchor_year,
                sex=_SEX.get(gender.strip().upper(), "other"),
            )
        )
    return _build(admissions, labs, items, micro, primary, titles, "mimic-iv")


def summary(cases: list[Case]) -> dict[str, float]:
    """Counts for reports: cases, exams per case (mean, median), lab names in the catalogue."""
    per = [len(c.exams) for c in cases]
    lab_names = {e.name for c in cases for e in c.exams if e.category == "lab"}
    mapped = {n for n in lab_names if n in default_catalogue()}
    return {
        "cases": len(cases),
        "exams_mean": statistics.fmean(per) if per else 0.0,
        "exams_median": statistics.median(per) if per else 0.0,
        "lab_names": len(lab_names),
        "lab_names_mapped": len(mapped),
    }
