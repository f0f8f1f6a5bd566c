"""The built-in case bank, the exam catalogue, the symptom vocabulary and JSONL case files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys

import msgspec
import pytest

from cases import (
    CONDITIONS,
    CaseFileError,
    Catalogue,
    builtin,
    default_catalogue,
    generate_case,
    read_jsonl,
    write_jsonl,
)
from cases.bank import ROUTINE_GROUPS, condition_by_name, condition_terms
from cases.catalogue import CATEGORIES, CatalogueError, Entry, exam_key
from cases.conditions import Num
from cases.symptoms import SYMPTOMS, find_symptoms, question_for
from cases.text import mentions, redact
from protocols.case import Case, ReferenceRange

N_CASES = 2000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bank() -> list[Case]:
    return builtin(N_CASES)


def _content(case: Case) -> bytes:
    return msgspec.json.encode(msgspec.structs.replace(case, id=""))


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_identical_cases(bank: list[Case]) -> None:
    again = [generate_case(i, 0) for i in range(100)]  # built afresh, not from the cache
    assert [msgspec.json.encode(c) for c in again] == [msgspec.json.encode(c) for c in bank[:100]]
    assert builtin(10) == bank[:10]  # a shorter bank is a prefix of a longer one


def test_determinism_survives_a_new_process_and_hash_seed(bank: list[Case]) -> None:
    code = (
        "import hashlib, msgspec; from cases import builtin; "
        "print(hashlib.sha256(b''.join(msgspec.json.encode(c) for c in builtin(40))).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    here = hashlib.sha256(b"".join(msgspec.json.encode(c) for c in bank[:40])).hexdigest()
    assert out.stdout.strip() == here


def test_different_seed_gives_different_cases(bank: list[Case]) -> None:
    other = builtin(100, seed=1)
    assert sum(_content(a) != _content(b) for a, b in zip(bank[:100], other, strict=True)) >= 95


def test_case_ids(bank: list[Case]) -> None:
    assert bank[42].id == "syn-000042"
    assert len({c.id for c in bank}) == N_CASES
    assert all(re.fullmatch(r"syn-\d{6}", c.id) for c in bank)
    assert builtin(0) == []
    with pytest.raises(ValueError):
        builtin(-1)


def test_distinct_cases(bank: list[Case]) -> None:
    assert len(bank) == N_CASES
    assert len({_content(c) for c in bank}) == N_CASES


# --- coverage and content -------------------------------------------------------------------------


def test_conditions_and_specialties(bank: list[Case]) -> None:
    assert len(CONDITIONS) >= 60
    assert len({c.specialty for c in CONDITIONS}) >= 10
    assert len({c.diagnosis.name for c in bank}) == len(CONDITIONS)  # every condition drawn
    assert len({c.specialty for c in bank}) >= 10


def test_condition_table_is_consistent() -> None:
    cat = default_catalogue()
    names: set[str] = set()
    terms: dict[str, str] = {}
    for cond in CONDITIONS:
        assert cond.name not in names
        names.add(cond.name)
        assert re.fullmatch(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?", cond.icd10), cond.icd10
        assert cond.age[0] <= cond.age[1] and 0.0 <= cond.female <= 1.0
        for term in condition_terms(cond):  # no name or synonym belongs to two conditions
            key = " ".join(w for w in re.findall(r"[a-z0-9]+", term.lower()))
            assert terms.setdefault(key, cond.name) == cond.name, term
        for exam in cond.findings:
            assert exam in cat and not cat.get(exam).is_panel, (cond.name, exam)
        assert cond.key_exams and set(cond.key_exams) <= set(cond.findings), cond.name
        assert set(cond.symptoms) <= set(SYMPTOMS), cond.name
        assert set(cond.details) <= set(cond.symptoms), cond.name
        for complaint in cond.complaints:
            assert set(complaint) <= set(cond.symptoms), (cond.name, complaint)
        for num in cond.findings.values():
            if isinstance(num, Num):
                assert num.sd > 0


def test_icd10_codes_are_valid_leaf_codes() -> None:
    icd = pytest.importorskip("simple_icd_10_cm")
    for cond in CONDITIONS:
        assert icd.is_valid_item(cond.icd10) and icd.is_leaf(cond.icd10), (cond.name, cond.icd10)


def test_complaints_are_shared() -> None:
    """Most chief complaints are shared by several conditions, so the agent must ask and examine."""
    by_symptom: dict[str, set[str]] = {}
    for cond in CONDITIONS:
        for complaint in cond.complaints:
            for name in complaint:
                by_symptom.setdefault(name, set()).add(cond.name)
    shared = 0
    for cond in CONDITIONS:
        if any(len(by_symptom[n]) >= 3 for c in cond.complaints for n in c):
            shared += 1
    assert shared >= 0.9 * len(CONDITIONS)
    assert len(by_symptom["chest pain"]) >= 6 and len(by_symptom["headache"]) >= 6


def test_every_exam_name_is_canonical(bank: list[Case]) -> None:
    cat = default_catalogue()
    for case in bank:
        for rec in case.exams:
            entry = cat.get(rec.name)  # KeyError if not a canonical name
            assert rec.category == entry.category
            assert not entry.is_panel
            assert cat.match(rec.name) is entry
        for name in case.key_exams:
            assert name in cat


def test_every_key_exam_is_in_the_case(bank: list[Case]) -> None:
    for case in bank:
        held = {r.name for r in case.exams}
        assert case.key_exams and set(case.key_exams) <= held, case.id


def test_profiles(bank: list[Case]) -> None:
    for case in bank:
        p = case.profile
        cond = condition_by_name(case.diagnosis.name)
        assert cond.age[0] <= p.demographics.age <= cond.age[1]
        assert p.demographics.sex in ("female", "male")
        assert case.diagnosis.icd10 == cond.icd10 and case.specialty == cond.specialty
        assert p.chief_complaint and p.chief_complaint in p.history_of_present_illness
        assert str(p.demographics.age) in p.history_of_present_illness
        present = [s for s in p.symptoms if s.present]
        assert present and all(s.detail for s in present)
        assert all(s.name in SYMPTOMS for s in p.symptoms)
        assert len({s.name for s in p.symptoms}) == len(p.symptoms)
        assert any(not s.present for s in p.symptoms)  # pertinent negatives
        # the chief complaint's symptoms are present
        for name in find_symptoms(p.chief_complaint):
            assert any(s.name == name and s.present for s in p.symptoms)
        if p.demographics.sex == "male":
            assert not {"missed period", "heavy periods"} & {s.name for s in p.symptoms}


def test_patient_facing_text_never_names_the_diagnosis(bank: list[Case]) -> None:
    for case in bank:
        terms = condition_terms(condition_by_name(case.diagnosis.name))
        p = case.profile
        texts = [
            p.chief_complaint,
            *(s.detail for s in p.symptoms),
            *p.past_history,
            *p.medications,
            *p.family_history,
            *p.social_history,
        ]
        for text in texts:
            assert not mentions(text, terms), (case.id, text)


def test_findings_follow_the_condition(bank: list[Case]) -> None:
    by = {}
    for case in bank:
        by.setdefault(case.diagnosis.name, []).append(case)

    def values(name: str, exam: str) -> list[float]:
        return [r.value for c in by[name] for r in c.exams if r.name == exam]

    dka_glucose = values("diabetic ketoacidosis", "glucose")
    dka_bicarb = values("diabetic ketoacidosis", "bicarbonate")
    assert min(dka_glucose) > 250 and max(dka_bicarb) < 20
    assert all(v < 7.35 for v in values("diabetic ketoacidosis", "arterial pH"))
    # correlated through the case's severity: higher glucose goes with lower bicarbonate and pH
    dka = [
        generate_case(i, 3, condition=condition_by_name("diabetic ketoacidosis"))
        for i in range(300)
    ]
    glucose, bicarb, ph = (
        [next(r.value for r in c.exams if r.name == name) for c in dka]
        for name in ("glucose", "bicarbonate", "arterial pH")
    )
    assert statistics.correlation(glucose, bicarb) < -0.2
    assert statistics.correlation(bicarb, ph) > 0.2
    wbc = values("community-acquired pneumonia", "white blood cell count")
    assert statistics.mean(wbc) > 12
    assert statistics.mean(values("community-acquired pneumonia", "C-reactive protein")) > 50
    assert all(v > 0.04 for v in values("acute myocardial infarction", "troponin I"))
    # qualitative findings
    for case in by["diabetic ketoacidosis"]:
        rec = next(r for r in case.exams if r.name == "urine ketones")
        assert rec.result != "negative"


def test_derived_values_are_consistent(bank: list[Case]) -> None:
    for case in bank:
        v = {r.name: r.value for r in case.exams if r.value is not None}
        if {"sodium", "chloride", "bicarbonate", "anion gap"} <= v.keys():
            assert v["anion gap"] == pytest.approx(
                v["sodium"] - v["chloride"] - v["bicarbonate"], abs=1.01
            )
        if {"hemoglobin", "hematocrit"} <= v.keys():
            assert v["hematocrit"] == pytest.approx(v["hemoglobin"] * 3, abs=4)


def test_unrelated_exams_are_mostly_normal(bank: list[Case]) -> None:
    cat = default_catalogue()
    routine = {name for group, _ in ROUTINE_GROUPS for name in group}
    total = abnormal = 0
    for case in bank:
        findings = condition_by_name(case.diagnosis.name).findings
        for rec in case.exams:
            entry = cat.get(rec.name)
            if rec.name in findings or rec.value is None:
                continue
            assert rec.name in routine or any(rec.name in cat.components(p) for p in _PANELS)
            total += 1
            ref = entry.reference
            if (ref.low is not None and rec.value < ref.low) or (
                ref.high is not None and rec.value > ref.high
            ):
                abnormal += 1
    assert total > 10_000
    assert 0.0 < abnormal / total < 0.1  # a few incidental (or derived) abnormalities


_PANELS = (
    "complete blood count",
    "basic metabolic panel",
    "liver function tests",
    "urinalysis",
    "iron studies",
    "thyroid function tests",
    "arterial blood gas",
    "lumbar puncture",
    "coagulation panel",
)


def test_numeric_results_read_like_a_report(bank: list[Case]) -> None:
    cat = default_catalogue()
    rec = next(r for r in bank[0].exams if r.value is not None)
    entry = cat.get(rec.name)
    assert rec.result.startswith(f"{rec.value:.{entry.decimals}f}")
    assert "reference" in rec.result and rec.reference == entry.reference


# --- symptoms -------------------------------------------------------------------------------------


def test_symptom_questions_and_names_are_recognised() -> None:
    for name, info in SYMPTOMS.items():
        assert find_symptoms(question_for(name)) == [name]
        assert find_symptoms(name) == [name]
        assert find_symptoms(f"No, I haven't had {info.noun}.") == [name]
    assert find_symptoms("Do you have a cough or any chest pain?") == ["cough", "chest pain"]
    assert find_symptoms("Have you been coughing up blood?") == ["coughing up blood"]
    assert find_symptoms("What's the weather like?") == []


# --- catalogue ------------------------------------------------------------------------------------


def test_catalogue_size_categories_costs() -> None:
    cat = default_catalogue()
    assert default_catalogue() is cat
    assert len(cat) >= 80
    entries = cat.entries
    assert {e.category for e in entries} == set(CATEGORIES)
    physical = [e.cost for e in entries if e.category == "physical"]
    assert max(physical) <= 5
    imaging = {e.name: e.cost for e in entries if e.category == "imaging"}
    assert min(imaging.values()) >= 50
    assert max(imaging, key=imaging.get).startswith("MRI")
    assert cat.get("MRI brain").cost > cat.get("CT head").cost > cat.get("chest X-ray").cost
    assert (
        cat.get("chest X-ray").cost
        > cat.get("complete blood count").cost
        > cat.get("heart rate").cost
    )
    for e in entries:
        assert e.cost > 0
        if e.is_numeric:
            assert e.unit or e.name in ("international normalized ratio", "arterial pH")


def test_panels() -> None:
    cat = default_catalogue()
    cbc = cat.get("complete blood count")
    assert cbc.is_panel
    assert {"hemoglobin", "white blood cell count", "platelet count"} <= set(cbc.panel)
    assert {"sodium", "potassium", "creatinine", "glucose"} <= set(
        cat.get("basic metabolic panel").panel
    )
    assert "alanine aminotransferase" in cat.get("liver function tests").panel
    assert cat.components("hemoglobin") == ("hemoglobin",)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("complete blood count", "complete blood count"),
        ("CBC", "complete blood count"),
        ("full blood count", "complete blood count"),
        ("FBC", "complete blood count"),
        ("Complete Blood Count (CBC)", "complete blood count"),
        ("Serum potassium levels", "potassium"),
        ("level of sodium", "sodium"),
        ("Hb", "hemoglobin"),
        ("haemoglobin", "hemoglobin"),
        ("platelets", "platelet count"),
        ("blood cultures", "blood culture"),
        ("chest x-ray", "chest X-ray"),
        ("CXR", "chest X-ray"),
        ("x ray of the chest", "chest X-ray"),
        ("EKG", "electrocardiogram"),
        ("CT scan of the head", "CT head"),
        ("head CT", "CT head"),
        ("brain MRI", "MRI brain"),
        ("magnetic resonance imaging of the brain", "MRI brain"),
        ("knee MRI", "MRI knee"),
        ("HbA1c", "hemoglobin A1c"),
        ("serum ketones", "beta-hydroxybutyrate"),
        ("urine ketones", "urine ketones"),
        ("LFTs", "liver function tests"),
        ("TSH", "thyroid stimulating hormone"),
        ("free T3", "free triiodothyronine"),
        ("D-dimer", "D-dimer"),
        ("RUQ US", "right upper quadrant ultrasound"),
        ("β-hCG", "beta-hCG"),
        ("rapid strep test", "rapid streptococcal antigen test"),
        ("Lipase level", "lipase"),
        # typos
        ("hemoglobn", "hemoglobin"),
        ("potasium", "potassium"),
        ("plateletts", "platelet count"),
        ("creatinin", "creatinine"),
        ("troponn", "troponin I"),
    ],
)
def test_match(text: str, name: str) -> None:
    entry = default_catalogue().match(text)
    assert entry is not None and entry.name == name


@pytest.mark.parametrize(
    "text",
    [
        "banana",
        "",
        "   ",
        "MRI shoulder",  # not in the catalogue: neither MRI brain nor MRI knee
        "MRI spine",
        "free T5",
        "hepatitis B",
        "troponin T",  # a different assay: not silently troponin I
        "blood gluc",
        "heart",
        "CT",
        "xyzzy plugh",
    ],
)
def test_no_match(text: str) -> None:
    assert default_catalogue().match(text) is None


def test_unrelated_names_never_match_each_other() -> None:
    cat = default_catalogue()
    pairs = [
        ("brain MRI", "MRI knee"),
        ("knee MRI", "MRI brain"),
        ("blood culture", "glucose"),
        ("urine glucose", "glucose"),
        ("CT chest", "CT head"),
        ("hemoglobin", "hemoglobin A1c"),
        ("free T4", "free triiodothyronine"),
        ("urine culture", "blood culture"),
        ("ALT", "aspartate aminotransferase"),
    ]
    for text, other in pairs:
        entry = cat.match(text)
        assert entry is None or entry.name != other, (text, other)


def test_every_name_and_alias_matches_its_own_entry() -> None:
    cat = default_catalogue()
    for e in cat.entries:
        for text in (e.name, *e.aliases):
            assert cat.match(text) is e, text
            assert cat.match(text.upper()) is e, text


def test_catalogue_refuses_inconsistent_data() -> None:
    a = Entry(name="alpha test", category="lab", cost=1, aliases=("AT",))
    b = Entry(name="beta test", category="lab", cost=1, aliases=("AT",))
    with pytest.raises(CatalogueError):
        Catalogue([a, b])
    with pytest.raises(CatalogueError):
        Catalogue([Entry(name="x panel", category="lab", cost=1, panel=("missing",))])
    with pytest.raises(CatalogueError):
        Catalogue([Entry(name="odd", category="astrology", cost=1)])
    assert exam_key("Serum Potassium levels") == "potassium"


def test_normal_results_are_within_the_reference_range() -> None:
    cat = default_catalogue()
    rng = random.Random(7)
    for e in cat.entries:
        for _ in range(20):
            rec = cat.normal_result(e, rng)
            assert rec.name == e.name and rec.category == e.category
            if e.is_numeric:
                ref: ReferenceRange = e.reference
                assert rec.value is not None
                assert ref.low is None or rec.value >= ref.low
                assert ref.high is None or rec.value <= ref.high
                assert "low;" not in rec.result and "high;" not in rec.result
            elif e.is_panel:
                assert all(f"{c}: " in rec.result for c in e.panel)
            else:
                assert rec.result == e.normal


# --- text helpers ---------------------------------------------------------------------------------


def test_mentions_and_redact() -> None:
    assert mentions("I think it's Pneumonia.", ["pneumonia"])
    assert mentions("kidney stones", ["kidney stone"])
    assert not mentions("pneumonias are common", ["monia"])  # whole words only
    assert not mentions("I'm incorrect", ["correct"])
    text, changed = redact("Is it a heart attack or a Heart-Attack?", ["heart attack"])
    assert changed and not mentions(text, ["heart attack"])
    assert redact("nothing here", ["flu"]) == ("nothing here", False)


# --- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path, bank: list[Case]) -> None:
    path = tmp_path / "cases.jsonl"
    assert write_jsonl(path, bank[:50]) == 50
    assert read_jsonl(path) == bank[:50]
    assert read_jsonl(str(path)) == bank[:50]


def test_jsonl_skips_blank_lines(tmp_path, bank: list[Case]) -> None:
    path = tmp_path / "cases.jsonl"
    lines = [msgspec.json.encode(c).decode() for c in bank[:2]]
    path.write_text(lines[0] + "\n\n   \n" + lines[1] + "\n")
    assert read_jsonl(path) == bank[:2]


def _broken_file(tmp_path, bank: list[Case], line: int, mutate) -> str:
    records = [json.loads(msgspec.json.encode(c)) for c in bank[:3]]
    mutate(records[line - 1])
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


def test_jsonl_error_names_file_line_and_field(tmp_path, bank: list[Case]) -> None:
    def bad_age(r: dict) -> None:
        r["profile"]["demographics"]["age"] = "forty"

    path = _broken_file(tmp_path, bank, 2, bad_age)
    with pytest.raises(CaseFileError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert path in message and "line 2" in message
    assert "$.profile.demographics.age" in message
    assert info.value.line == 2 and isinstance(info.value, ValueError)


def test_jsonl_missing_field(tmp_path, bank: list[Case]) -> None:
    path = _broken_file(tmp_path, bank, 3, lambda r: r.pop("diagnosis"))
    with pytest.raises(CaseFileError, match=r"line 3: .*diagnosis"):
        read_jsonl(path)


def test_jsonl_malformed_json(tmp_path, bank: list[Case]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(msgspec.json.encode(bank[0]).decode() + "\n{not json\n")
    with pytest.raises(CaseFileError, match="line 2: malformed JSON"):
        read_jsonl(path)
