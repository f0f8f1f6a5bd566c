"""Clinical case data: what the Patient, Examiner and Judge know about one patient.

A case is plain data, carried inside requests so that any worker of a service can serve any
episode without shared state.
"""

from __future__ import annotations

import msgspec


class Demographics(msgspec.Struct, frozen=True, gc=False):
    age: int
    sex: str  # "female" | "male" | "other"
    ethnicity: str = ""


class Symptom(msgspec.Struct, frozen=True, gc=False):
    """One thing the patient can report when asked about it."""

    name: str
    present: bool = True
    detail: str = ""  # onset, character, severity, ... in the patient's words


class PatientProfile(msgspec.Struct, frozen=True):
    demographics: Demographics
    chief_complaint: str
    history_of_present_illness: str = ""
    symptoms: list[Symptom] = []
    past_history: list[str] = []
    medications: list[str] = []
    allergies: list[str] = []
    family_history: list[str] = []
    social_history: list[str] = []


class ReferenceRange(msgspec.Struct, frozen=True, gc=False):
    low: float | None = None
    high: float | None = None
    text: str = ""  # for qualitative results: "negative", "no acute findings", ...


class ExamRecord(msgspec.Struct, frozen=True, gc=False):
    """One examination result the case holds (physical finding, lab value, culture, image)."""

    name: str  # canonical catalogue name
    category: str  # physical | lab | microbiology | imaging | other
    result: str  # the text a clinician would read
    value: float | None = None
    unit: str = ""
    reference: ReferenceRange | None = None
    time_offset_h: float = 0.0  # hours from presentation


class Diagnosis(msgspec.Struct, frozen=True, gc=False):
    name: str
    icd10: str = ""
    synonyms: list[str] = []


class Case(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    profile: PatientProfile
    exams: list[ExamRecord] = []
    key_exams: list[str] = []  # canonical names a clinician would order
    diagnosis: Diagnosis
    specialty: str = ""
    source: str = "builtin"
