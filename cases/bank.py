"""The built-in synthetic case bank: a deterministic generator over the condition table.

`builtin(n, seed)` returns `n` cases; case `i` depends only on `(seed, i)`, so `builtin(10)` is a
prefix of `builtin(2000)` and the same arguments always give identical cases. Each case draws a
condition, demographics, a chief complaint, present symptoms and pertinent negatives, history
(past, medications, allergies, family, social), and exam records: the condition's findings
(numeric values correlated through a per-case severity, derived values such as the anion gap
computed from their parts) plus a realistic set of routine exams with normal values (with the
odd incidental abnormality). Every exam name is a catalogue canonical name.
"""

from __future__ import annotations

import functools
import math
import random

from cases.catalogue import Catalogue, Entry, default_catalogue, normal_value
from cases.conditions import CONDITIONS, FEMALE_ONLY, Condition, History, Num, Text
from cases.symptoms import SYMPTOMS
from cases.text import mentions
from protocols.case import (
    Case,
    Demographics,
    Diagnosis,
    ExamRecord,
    PatientProfile,
    Symptom,
)

__all__ = [
    "CONDITIONS",
    "Condition",
    "builtin",
    "condition_by_name",
    "condition_terms",
    "generate_case",
    "ROUTINE_GROUPS",
]

SEVERITY_RHO = 0.6  # correlation of each abnormal numeric finding with the case's severity
INCIDENTAL_RATE = 0.04  # chance that a routine numeric exam is mildly out of range
BACKGROUND_SYMPTOM_RATE = 0.1  # chance of one unrelated everyday symptom
SINGLE_COMPLAINT_RATE = 0.6  # a multi-symptom complaint is reduced to one of its symptoms

# exams that are reported together: if a condition names one member, the case holds all of them
_LAB_GROUPS: dict[str, tuple[str, ...]] = {
    "complete blood count": (
        "hemoglobin",
        "hematocrit",
        "white blood cell count",
        "platelet count",
        "mean corpuscular volume",
        "neutrophil count",
        "lymphocyte count",
        "eosinophil count",
    ),
    "basic metabolic panel": (
        "sodium",
        "potassium",
        "chloride",
        "bicarbonate",
        "blood urea nitrogen",
        "creatinine",
        "glucose",
        "calcium",
        "anion gap",
    ),
    "liver function tests": (
        "alanine aminotransferase",
        "aspartate aminotransferase",
        "alkaline phosphatase",
        "total bilirubin",
        "direct bilirubin",
        "albumin",
        "total protein",
        "gamma-glutamyl transferase",
    ),
    "urinalysis": (
        "urine leukocyte esterase",
        "urine nitrite",
        "urine blood",
        "urine protein",
        "urine glucose",
        "urine ketones",
        "urine microscopy",
    ),
    "iron studies": (
        "serum iron",
        "total iron binding capacity",
        "transferrin saturation",
        "ferritin",
    ),
    "thyroid function tests": (
        "thyroid stimulating hormone",
        "free thyroxine",
        "free triiodothyronine",
    ),
    "arterial blood gas": ("arterial pH", "arterial pCO2", "arterial pO2"),
    "lumbar puncture": ("CSF white cell count", "CSF glucose", "CSF protein", "CSF gram stain"),
    "coagulation panel": (
        "prothrombin time",
        "international normalized ratio",
        "activated partial thromboplastin time",
    ),
}

_VITALS = (
    "temperature",
    "heart rate",
    "systolic blood pressure",
    "diastolic blood pressure",
    "respiratory rate",
    "oxygen saturation",
)

# routine work-up: (exams, probability that a case holds them)
ROUTINE_GROUPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (_VITALS, 1.0),
    (("general appearance",), 0.6),
    (("cardiac examination",), 0.5),
    (("lung examination",), 0.5),
    (("abdominal examination",), 0.5),
    (_LAB_GROUPS["complete blood count"], 0.75),
    (_LAB_GROUPS["basic metabolic panel"], 0.75),
    (_LAB_GROUPS["liver function tests"], 0.35),
    (("C-reactive protein",), 0.3),
    (_LAB_GROUPS["urinalysis"], 0.3),
    (("electrocardiogram",), 0.3),
    (("chest X-ray",), 0.15),
    (_LAB_GROUPS["coagulation panel"], 0.15),
)

_TIME_OFFSET_H = {"physical": 0.0, "other": 0.5, "lab": 1.0, "imaging": 2.0, "microbiology": 48.0}

# --- generic pools -------------------------------------------------------------------------------

_GENERIC_HISTORY = (
    History("hypertension", 0.25, ("amlodipine 5 mg daily",), min_age=40),
    History("high cholesterol", 0.2, ("atorvastatin 20 mg daily",), min_age=40),
    History("osteoarthritis of the knees", 0.15, ("paracetamol as needed",), min_age=55),
    History("type 2 diabetes", 0.08, ("metformin 500 mg twice daily",), min_age=40),
    History("hay fever", 0.08, ("cetirizine 10 mg as needed",)),
    History("an appendix operation as a child", 0.04),
    History("a broken wrist years ago", 0.04),
)
_ALLERGIES = (
    ("penicillin (rash)", 0.08),
    ("sulfa drugs (hives)", 0.04),
    ("codeine (nausea)", 0.03),
    ("peanuts (swelling of the lips)", 0.02),
    ("latex (itchy rash)", 0.02),
)
_FAMILY = (
    ("my father has high blood pressure", 0.2),
    ("my mother has type 2 diabetes", 0.15),
    ("my grandmother had breast cancer", 0.05),
    ("my father had a stroke in his seventies", 0.05),
    ("my brother has asthma", 0.05),
    ("my mother had her gallbladder removed", 0.04),
)
_SOCIAL: dict[str, tuple[tuple[str, float], ...]] = {
    "smoking": (
        ("I smoke about ten cigarettes a day", 0.15),
        ("I used to smoke but quit years ago", 0.15),
        ("I've never smoked", 0.7),
    ),
    "alcohol": (
        ("I don't drink alcohol", 0.3),
        ("I have a glass or two of wine at the weekend", 0.45),
        ("I drink about three beers most nights", 0.1),
        ("I drink socially now and then", 0.15),
    ),
    "living": (
        ("I live with my partner", 0.45),
        ("I live alone", 0.25),
        ("I live with my family", 0.3),
    ),
}
_JOBS = (
    "I work as a teacher",
    "I work in an office",
    "I'm a nurse",
    "I drive a delivery van",
    "I work in construction",
    "I'm a shop assistant",
    "I work in IT",
    "I'm a chef",
    "I'm an accountant",
    "I'm a hairdresser",
    "I work on a farm",
    "I'm a cleaner",
)
_BACKGROUND_SYMPTOMS = ("headache", "fatigue", "back pain", "sleep problems", "runny nose")
_RED_FLAG_NEGATIVES = (
    "fever",
    "chest pain",
    "shortness of breath",
    "weight loss",
    "vomiting",
    "headache",
    "blood in stool",
    "rash",
    "fainting",
    "abdominal pain",
)


# --- lookups -------------------------------------------------------------------------------------


@functools.cache
def _by_name() -> dict[str, Condition]:
    return {c.name: c for c in CONDITIONS}


def condition_by_name(name: str) -> Condition:
    return _by_name()[name]


def condition_terms(cond: Condition) -> tuple[str, ...]:
    """Every name the condition goes by (its name and synonyms)."""
    return (cond.name, *cond.synonyms)


# --- generation ----------------------------------------------------------------------------------


def _pick(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str | None:
    """One option by probability; None with the remaining probability."""
    u = rng.random()
    acc = 0.0
    for text, p in options:
        acc += p
        if u < acc:
            return text
    return None


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _detail(cond: Condition, name: str, onset: str) -> str:
    template = cond.details.get(name) or SYMPTOMS[name].detail
    return template.replace("{onset}", onset)


def _clamp(value: float, num: Num) -> float:
    if num.lo is not None:
        value = max(value, num.lo)
    if num.hi is not None:
        value = min(value, num.hi)
    return max(value, 0.0)


def _direction(entry: Entry, mean: float) -> int:
    ref = entry.reference
    if ref.high is not None and mean > ref.high:
        return 1
    if ref.low is not None and mean < ref.low:
        return -1
    return 0


def _incidental(entry: Entry, rng: random.Random) -> float:
    ref = entry.reference
    lo, hi = ref.low, ref.high
    width = (hi - lo) if lo is not None and hi is not None else abs(hi or lo or 1.0) * 0.5
    sides = [s for s, b in (("low", lo), ("high", hi)) if b is not None and (s == "high" or b > 0)]
    side = rng.choice(sides)
    bump = width * rng.uniform(0.05, 0.3) + 10.0**-entry.decimals
    value = (hi + bump) if side == "high" else max(lo - bump, 0.0)  # type: ignore[operator]
    return round(value, entry.decimals)


class _Builder:
    """Assembles one case's exam records."""

    def __init__(self, cat: Catalogue, cond: Condition, rng: random.Random) -> None:
        self.cat = cat
        self.cond = cond
        self.rng = rng
        self.severity = rng.gauss(0.0, 1.0)
        self.values: dict[str, float] = {}
        self.texts: dict[str, str] = {}
        self.order: list[str] = []

    def want(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)

    def build(self) -> list[ExamRecord]:
        cond, rng, cat = self.cond, self.rng, self.cat
        # which exams the case holds: the condition's findings (with their report groups) ...
        for name in cond.findings:
            for members in _LAB_GROUPS.values():
                if name in members:
                    for m in members:
                        self.want(m)
            self.want(name)
        # ... and a routine work-up
        for exams, p in ROUTINE_GROUPS:
            if rng.random() < p:
                for name in exams:
                    self.want(name)
        # values: condition findings first, then normal (or incidental) values for the rest
        z = self.severity
        for name in self.order:
            entry = cat.get(name)
            dist = cond.findings.get(name)
            if isinstance(dist, Num):
                d = _direction(entry, dist.mean)
                e = rng.gauss(0.0, 1.0)
                noise = d * SEVERITY_RHO * z + math.sqrt(1 - SEVERITY_RHO**2) * e if d else e
                self.values[name] = round(_clamp(dist.mean + dist.sd * noise, dist), entry.decimals)
            elif isinstance(dist, Text):
                self.texts[name] = _pick(rng, dist.options) or entry.normal
            elif entry.is_numeric:
                if rng.random() < INCIDENTAL_RATE:
                    self.values[name] = _incidental(entry, rng)
                else:
                    self.values[name] = normal_value(entry, rng)
            else:
                self.texts[name] = entry.normal
        self._derive()
        records = []
        for name in self.order:
            entry = cat.get(name)
            if name in self.values:
                rec = cat.record(entry, value=self.values[name])
            else:
                rec = cat.record(entry, text=self.texts[name])
            offset = _TIME_OFFSET_H.get(entry.category, 1.0)
            records.append(
                ExamRecord(
                    name=rec.name,
                    category=rec.category,
                    result=rec.result,
                    value=rec.value,
                    unit=rec.unit,
                    reference=rec.reference,
                    time_offset_h=offset,
                )
            )
        return records

    def _derive(self) -> None:
        """Values that physiology ties together."""
        v, f, rng = self.values, self.cond.findings, self.rng
        if "hemoglobin" in v and "hematocrit" in v and "hematocrit" not in f:
            v["hematocrit"] = round(v["hemoglobin"] * 3.0 + rng.gauss(0.0, 0.8), 1)
        if "sodium" in v and "bicarbonate" in v and "anion gap" in v:
            if "chloride" in f and "anion gap" not in f:
                v["anion gap"] = round(v["sodium"] - v["chloride"] - v["bicarbonate"])
            else:
                v["chloride"] = round(v["sodium"] - v["bicarbonate"] - v["anion gap"])
        if "serum osmolality" in v and {"sodium", "glucose", "blood urea nitrogen"} <= v.keys():
            osm = 2 * v["sodium"] + v["glucose"] / 18 + v["blood urea nitrogen"] / 2.8
            v["serum osmolality"] = round(osm + rng.gauss(0.0, 2.0))
        if "international normalized ratio" in v and "prothrombin time" in v:
            v["prothrombin time"] = round(12.2 * v["international normalized ratio"], 1)


def generate_case(
    index: int, seed: int = 0, cat: Catalogue | None = None, condition: Condition | None = None
) -> Case:
    """Case number `index` of the bank with this seed (optionally forcing the condition)."""
    cat = cat or default_catalogue()
    rng = random.Random(f"dxsim-builtin:{seed}:{index}")
    cond = condition or rng.choices(CONDITIONS, weights=[c.weight for c in CONDITIONS])[0]
    terms = condition_terms(cond)

    # demographics
    sex = "female" if rng.random() < cond.female else "male"
    age = rng.randint(cond.age[0], cond.age[1])
    onset = rng.choice(cond.onset)

    # symptoms: the chief complaint's (often just one of its symptoms), then each listed one by
    # its probability
    complaint = rng.choice(cond.complaints)
    if len(complaint) > 1 and rng.random() < SINGLE_COMPLAINT_RATE:
        complaint = (rng.choice(complaint),)
    present: list[str] = list(complaint)
    absent: list[str] = []
    for name, p in cond.symptoms.items():
        if name in present or (sex == "male" and name in FEMALE_ONLY):
            continue
        if rng.random() < p:
            present.append(name)
        elif rng.random() < 0.7:
            absent.append(name)
    if rng.random() < BACKGROUND_SYMPTOM_RATE:
        extra = rng.choice(_BACKGROUND_SYMPTOMS)
        if extra not in cond.symptoms:
            present.append(extra)
    pool = [s for s in _RED_FLAG_NEGATIVES if s not in cond.symptoms and s not in present]
    absent.extend(rng.sample(pool, k=min(2, len(pool))))
    symptoms = [Symptom(name=s, present=True, detail=_detail(cond, s, onset)) for s in present]
    symptoms += [Symptom(name=s, present=False) for s in absent]

    # history
    past: list[str] = []
    meds: list[str] = []

    def add_history(h: History) -> None:
        if h.sex and h.sex != sex or age < h.min_age or h.item in past:
            return
        if rng.random() < h.p and not mentions(h.item, terms):
            past.append(h.item)
            meds.extend(m for m in h.meds if m not in meds)

    for h in cond.history:
        add_history(h)
    for h in _GENERIC_HISTORY:
        if h.item not in cond.exclude:
            add_history(h)
    for med, p in cond.medications:
        if rng.random() < p and med not in meds:
            meds.append(med)
    allergies = [a for a, p in _ALLERGIES if rng.random() < p]
    family = [f for f, p in (*cond.family, *_FAMILY) if rng.random() < p and not mentions(f, terms)]
    social: list[str] = []
    topics = {**_SOCIAL, **cond.social}
    for options in topics.values():
        choice = _pick(rng, options)
        if choice and not mentions(choice, terms):
            social.append(choice)
    if "occupation" not in cond.social:
        if age < 23:
            social.append("I'm a student")
        elif age >= 67:
            social.append("I'm retired")
        else:
            social.append(rng.choice(_JOBS))

    # narrative
    he = "She" if sex == "female" else "He"
    person = "woman" if sex == "female" else "man"
    cc = _join(list(complaint))
    others = [s for s in present if s not in complaint]
    hpi = f"{age}-year-old {person} presenting with {cc} for {onset}."
    if others:
        hpi += f" {he} also reports {_join(others)}."
    if absent:
        hpi += f" {he} denies {_join(absent)}."

    builder = _Builder(cat, cond, rng)
    exams = builder.build()
    return Case(
        id=f"syn-{index:06d}",
        profile=PatientProfile(
            demographics=Demographics(age=age, sex=sex),
            chief_complaint=cc,
            history_of_present_illness=hpi,
            symptoms=symptoms,
            past_history=past,
            medications=meds,
            allergies=allergies,
            family_history=family,
            social_history=social,
        ),
        exams=exams,
        key_exams=list(cond.key_exams),
        diagnosis=Diagnosis(name=cond.name, icd10=cond.icd10, synonyms=list(cond.synonyms)),
        specialty=cond.specialty,
        source="builtin",
    )


@functools.lru_cache(maxsize=8)
def _builtin(n: int, seed: int) -> tuple[Case, ...]:
    cat = default_catalogue()
    return tuple(generate_case(i, seed, cat) for i in range(n))


def builtin(n: int = 2000, seed: int = 0) -> list[Case]:
    """`n` synthetic cases; the same arguments always give identical cases ("syn-000042")."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(_builtin(n, seed))
