"""Loaders of other people's data (cases/loaders/) on ../shared/data, plus broken-file tests."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from cases.catalogue import CATEGORIES, default_catalogue
from cases.jsonl import CaseFileError
from cases.loaders import agentclinic, ddxplus, fhir, mimic, synthea
from protocols.case import Case

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared data folder {DATA} is absent (external data, not shipped)"
)

AGENTCLINIC = DATA / "agentclinic" / "medqa.jsonl"
MIMIC_III = DATA / "mimic-iii-demo"
SYNTHEA_FHIR = DATA / "synthea" / "fhir"
DDXPLUS = DATA / "ddxplus"
PREVIEW = DATA / "mimic-iv-demo-schema" / "preview.txt"
MIMIC_IV_TABLES = (
    "patients",
    "admissions",
    "labevents",
    "d_labitems",
    "diagnoses_icd",
    "d_icd_diagnoses",
    "microbiologyevents",
)


def _valid(case: Case) -> None:
    assert case.id and case.diagnosis.name.strip()
    assert case.profile.demographics.sex in ("female", "male", "other")
    assert 0 <= case.profile.demographics.age <= 120
    for e in case.exams:
        assert e.name and e.category in CATEGORIES
    cat = default_catalogue()
    for k in case.key_exams:
        assert k.strip()
        if cat.match(k) is not None and k in cat:
            assert cat.get(k).name == k


# --- AgentClinic ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agentclinic_cases() -> list[Case]:
    if not AGENTCLINIC.exists():
        pytest.skip(f"{AGENTCLINIC} is absent")
    return agentclinic.load(str(AGENTCLINIC))


@needs_data
def test_agentclinic_all_107_load(agentclinic_cases: list[Case]) -> None:
    assert len(agentclinic_cases) == 107
    assert len({c.id for c in agentclinic_cases}) == 107
    for c in agentclinic_cases:
        _valid(c)
        assert c.source == "agentclinic"
        assert c.profile.chief_complaint and c.profile.symptoms
        assert c.exams
    # two cases have an empty Test_Results ({}): nothing to order beyond the bedside
    assert sum(not c.key_exams for c in agentclinic_cases) == 2
    first = agentclinic_cases[0]
    assert first.diagnosis.name == "Myasthenia gravis"
    assert (first.profile.demographics.age, first.profile.demographics.sex) == (35, "female")
    names = {e.name for e in first.exams}
    assert {"temperature", "systolic blood pressure", "neurological examination"} <= names
    assert "CT chest" in first.key_exams
    temp = next(e for e in first.exams if e.name == "temperature")
    assert temp.value == pytest.approx(36.6) and temp.reference is not None


@needs_data
def test_agentclinic_mapping_rate() -> None:
    if not AGENTCLINIC.exists():
        pytest.skip(f"{AGENTCLINIC} is absent")
    report = agentclinic.mapping_report(str(AGENTCLINIC))
    # measured: 355 of 413 test mentions (86%), 107 of 161 distinct test names
    assert report["mapped"] / report["tests"] >= 0.8
    assert report["distinct_mapped"] >= 100


def test_agentclinic_demographics() -> None:
    p = agentclinic.parse_demographics
    assert (p("45-year-old male").age, p("45-year-old male").sex) == (45, "male")
    assert p("2-week-old female newborn").age == 0
    assert p("2-week-old female newborn").sex == "female"
    assert p("Newborn, 3050-g (6-lb 12-oz) male, six hours post delivery").sex == "male"
    assert p("23-year-old college student", "She reports ...").sex == "female"
    assert p("3-year-old child").sex == "other"
    assert p("42-year-old Caucasian male").ethnicity == "caucasian"
    assert p("32-year-old woman, gravida 2, para 1").sex == "female"


_GOOD_OSCE = {
    "OSCE_Examination": {
        "Patient_Actor": {
            "Demographics": "50-year-old man",
            "History": "Two days of fever.",
            "Symptoms": {"Primary_Symptom": "Fever", "Secondary_Symptoms": ["Cough"]},
        },
        "Physical_Examination_Findings": {"Vital_Signs": {"Heart_Rate": "110 bpm"}},
        "Test_Results": {"Complete_Blood_Count": {"WBC": "15,000/mm^3"}},
        "Correct_Diagnosis": "Pneumonia",
    }
}


def test_agentclinic_small_file(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(_GOOD_OSCE) + "\n\n")
    (case,) = agentclinic.load(str(path))
    assert case.key_exams == ["complete blood count"]
    wbc = next(e for e in case.exams if e.name == "white blood cell count")
    assert wbc.value == 15000 and wbc.unit == "/mm^3" and wbc.reference is None  # not 10^9/L


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["OSCE_Examination"].pop("Correct_Diagnosis"), "Correct_Diagnosis"),
        (
            lambda d: d["OSCE_Examination"]["Patient_Actor"].__setitem__("Demographics", 50),
            "Patient_Actor.Demographics",
        ),
        (
            lambda d: d["OSCE_Examination"].__setitem__("Test_Results", ["CBC"]),
            "Test_Results",
        ),
    ],
)
def test_agentclinic_broken_record(tmp_path: Path, mutate, field: str) -> None:
    bad = json.loads(json.dumps(_GOOD_OSCE))
    mutate(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_GOOD_OSCE) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(CaseFileError, match=f"line 2.*{field}") as info:
        agentclinic.load(str(path))
    assert info.value.path == str(path) and info.value.line == 2
    assert info.value.field.endswith(field)


def test_agentclinic_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(_GOOD_OSCE) + "\n" + json.dumps(_GOOD_OSCE)[:120] + "\n")
    with pytest.raises(CaseFileError, match=r"cut\.jsonl, line 2: malformed JSON"):
        agentclinic.load(str(path))


# --- MIMIC-III -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mimic_iii_cases() -> list[Case]:
    if not MIMIC_III.is_dir():
        pytest.skip(f"{MIMIC_III} is absent")
    return mimic.load_mimic_iii(str(MIMIC_III))


@needs_data
def test_mimic_iii_demo(mimic_iii_cases: list[Case]) -> None:
    # all 129 admissions (admission 160442's only labs are ED labs charted before ADMITTIME)
    assert len(mimic_iii_cases) == 129
    for c in mimic_iii_cases:
        _valid(c)
        assert c.diagnosis.icd10 == ""
        assert any(s.startswith("ICD-9-CM ") for s in c.diagnosis.synonyms)
        assert all(0 <= e.time_offset_h <= 48 for e in c.exams)
        assert c.profile.demographics.age >= 15  # the demo has adults only
    s = mimic.summary(mimic_iii_cases)
    # measured: 111.2 records per case on average, median 102
    assert 100 <= s["exams_mean"] <= 125 and 90 <= s["exams_median"] <= 115
    assert s["lab_names_mapped"] >= 75
    sepsis = next(c for c in mimic_iii_cases if c.id == "mimic-iii-142345")
    assert sepsis.diagnosis.name == "Sepsis" and "ICD-9-CM 99591" in sepsis.diagnosis.synonyms
    assert (sepsis.profile.demographics.age, sepsis.profile.demographics.sex) == (70, "female")
    lactate = next(e for e in sepsis.exams if e.name == "lactate")
    assert lactate.value == 4.4 and lactate.unit == "mmol/L" and "abnormal" in lactate.result
    assert "blood culture" in sepsis.key_exams
    ages = [c.profile.demographics.age for c in mimic_iii_cases]
    assert ages.count(90) >= 5  # MIMIC's >89 shift, reported as 90
    assert 55 <= statistics.median(ages) <= 80


def _copy_mimic_iii(tmp_path: Path) -> Path:
    small = tmp_path / "m3"
    small.mkdir()
    for f in MIMIC_III.glob("*.csv"):
        if f.name != "LABEVENTS_subset_cols.csv":
            shutil.copy(f, small / f.name)
    lines = (MIMIC_III / "LABEVENTS_subset_cols.csv").read_text().splitlines()[:200]
    (small / "LABEVENTS_subset_cols.csv").write_text("\n".join(lines) + "\n")
    return small


@needs_data
def test_mimic_iii_missing_column(tmp_path: Path) -> None:
    if not MIMIC_III.is_dir():
        pytest.skip(f"{MIMIC_III} is absent")
    small = _copy_mimic_iii(tmp_path)
    text = (small / "DIAGNOSES_ICD.csv").read_text().replace("SEQ_NUM", "SEQ")
    (small / "DIAGNOSES_ICD.csv").write_text(text)
    with pytest.raises(CaseFileError, match=r"DIAGNOSES_ICD\.csv, line 1, field 'SEQ_NUM'"):
        mimic.load_mimic_iii(str(small))


@needs_data
def test_mimic_iii_bad_timestamp(tmp_path: Path) -> None:
    if not MIMIC_III.is_dir():
        pytest.skip(f"{MIMIC_III} is absent")
    small = _copy_mimic_iii(tmp_path)
    lines = (small / "ADMISSIONS.csv").read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[3], "yesterday", 1)
    (small / "ADMISSIONS.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CaseFileError, match=r"ADMISSIONS\.csv, line 4, field 'ADMITTIME'"):
        mimic.load_mimic_iii(str(small))


# --- MIMIC-IV ------------------------------------------------------------------------------------


def _preview_columns() -> dict[str, list[str]]:
    """Table -> column names, from the pandas preview of the MIMIC-IV demo."""
    out: dict[str, list[str]] = {}
    lines = PREVIEW.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("===== ./hosp/") and line.endswith(".csv ====="):
            table = line[len("===== ./hosp/") : -len(".csv =====")]
            out[table] = lines[i + 1].split()
    return out


@needs_data
def test_mimic_iv_fixture_headers_match_the_demo_schema() -> None:
    if not PREVIEW.exists():
        pytest.skip(f"{PREVIEW} is absent")
    columns = _preview_columns()
    for table in MIMIC_IV_TABLES:
        header = (FIXTURES / "mimic_iv" / "hosp" / f"{table}.csv").read_text().splitlines()[0]
        assert header.split(",") == columns[table], table


def test_mimic_iv_fixture() -> None:
    cases = mimic.load_mimic_iv(str(FIXTURES / "mimic_iv"))
    # admission 29000003 has no diagnosis: no case
    assert [c.id for c in cases] == ["mimic-iv-29000001", "mimic-iv-29000002"]
    sepsis, mi = cases
    for c in cases:
        _valid(c)
    assert sepsis.diagnosis.name == "Sepsis, unspecified organism"
    assert sepsis.diagnosis.icd10 == "A41.9"
    assert (sepsis.profile.demographics.age, sepsis.profile.demographics.sex) == (66, "female")
    wbc = [e for e in sepsis.exams if e.name == "white blood cell count"]
    assert len(wbc) == 1  # the second count is 30 h after admission, outside the window
    assert wbc[0].value == 15.2 and wbc[0].reference.high == 11 and wbc[0].time_offset_h == 0.5
    assert {"lactate", "creatinine", "blood culture", "urine culture", "urine glucose"} <= {
        e.name for e in sepsis.exams
    }
    culture = next(e for e in sepsis.exams if e.name == "blood culture")
    assert culture.category == "microbiology" and "CIPROFLOXACIN R" in culture.result
    assert mi.diagnosis.icd10 == "" and "ICD-9-CM 41071" in mi.diagnosis.synonyms
    assert mi.profile.demographics.age == 46
    assert {e.name for e in mi.exams} == {"troponin I", "Made-up Marker"}
    assert mi.key_exams == ["troponin I"]


def test_mimic_iv_broken(tmp_path: Path) -> None:
    root = tmp_path / "m4"
    shutil.copytree(FIXTURES / "mimic_iv", root)
    labs = root / "hosp" / "labevents.csv"
    lines = labs.read_text().splitlines()
    lines[2] = lines[2].replace("2152-03-01 09:00:00", "03/01/2152", 1)
    labs.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaseFileError, match=r"labevents\.csv, line 3, field 'charttime'"):
        mimic.load_mimic_iv(str(root))
    lines = (FIXTURES / "mimic_iv" / "hosp" / "labevents.csv").read_text().splitlines()
    labs.write_text("\n".join([lines[0], lines[1][:40]]) + "\n")  # truncated row
    with pytest.raises(CaseFileError, match=r"labevents\.csv, line 2: .*values for 16 columns"):
        mimic.load_mimic_iv(str(root))
    (root / "hosp" / "labevents.csv").unlink()
    with pytest.raises(CaseFileError, match="labevents.csv.*table not found"):
        mimic.load_mimic_iv(str(root))


# --- FHIR ----------------------------------------------------------------------------------------


@needs_data
def test_fhir_synthea_bundles() -> None:
    if not SYNTHEA_FHIR.is_dir():
        pytest.skip(f"{SYNTHEA_FHIR} is absent")
    bundles = sorted(SYNTHEA_FHIR.glob("*.json"))
    assert len(bundles) == 2
    cases = fhir.load_bundles(str(SYNTHEA_FHIR))
    assert len(cases) == 2
    by_dx = {c.diagnosis.name: c for c in cases}
    for c in cases:
        _valid(c)
        assert c.source == "fhir" and c.exams and c.key_exams
    sepsis = by_dx["Sepsis"]
    assert sepsis.diagnosis.synonyms == ["SNOMED CT 91302008"]
    assert sepsis.profile.demographics.age == 25 and sepsis.profile.demographics.sex == "male"
    assert {"blood culture", "lactate"} <= set(sepsis.key_exams)
    assert any(p.startswith("Acute bacterial sinusitis") for p in sepsis.profile.past_history)
    covid = by_dx["Disease caused by severe acute respiratory syndrome coronavirus 2"]
    assert [s.name for s in covid.profile.symptoms][:2] == ["Cough", "Sore throat"]
    assert covid.profile.chief_complaint == "Cough"
    temp = next(e for e in covid.exams if e.name == "temperature")
    assert temp.value == pytest.approx(41.684) and temp.reference.high == 37.2
    assert "SARS-CoV-2 PCR" in covid.key_exams
    flu = next(e for e in covid.exams if e.name == "influenza rapid test")
    assert "Not detected" in flu.result


def _bundle(**patient: object) -> dict:
    enc = "urn:uuid:enc-1"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:pat-1",
                "resource": {
                    "resourceType": "Patient",
                    "id": "pat-1",
                    "gender": "female",
                    "birthDate": "1980-06-01",
                    **patient,
                },
            },
            {
                "fullUrl": enc,
                "resource": {
                    "resourceType": "Encounter",
                    "id": "enc-1",
                    "period": {"start": "2020-05-01T10:00:00Z", "end": "2020-05-01T11:00:00Z"},
                },
            },
            {
                "fullUrl": "urn:uuid:c-1",
                "resource": {
                    "resourceType": "Condition",
                    "id": "c-1",
                    "clinicalStatus": {"coding": [{"code": "active"}]},
                    "code": {
                        "coding": [
                            {
                                "system": "http://snomed.info/sct",
                                "code": "38341003",
                                "display": "Hypertension (disorder)",
                            },
                            {
                                "system": "http://hl7.org/fhir/sid/icd-10-cm",
                                "code": "I10",
                                "display": "Essential hypertension",
                            },
                        ]
                    },
                    "encounter": {"reference": enc},
                    "onsetDateTime": "2020-05-01T10:30:00Z",
                },
            },
            {
                "fullUrl": "urn:uuid:o-1",
                "resource": {
                    "resourceType": "Observation",
                    "id": "o-1",
                    "category": [{"coding": [{"code": "laboratory"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
                    "encounter": {"reference": enc},
                    "effectiveDateTime": "2020-05-01T10:30:00Z",
                    "valueQuantity": {"value": 3.1, "unit": "mmol/L"},
                    "referenceRange": [{"low": {"value": 3.5}, "high": {"value": 5.1}}],
                },
            },
        ],
    }


def test_fhir_small_bundle(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(_bundle()))
    (case,) = fhir.load_bundle(str(path))
    assert case.diagnosis.name == "Hypertension" and case.diagnosis.icd10 == "I10"
    assert case.profile.demographics.age == 39
    (k,) = case.exams
    assert (k.name, k.value, k.reference.low, k.time_offset_h) == ("potassium", 3.1, 3.5, 0.5)
    assert case.key_exams == ["potassium"]


def test_fhir_broken(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(_bundle(), indent=1)[:300])
    with pytest.raises(CaseFileError, match=r"b\.json, line \d+: malformed JSON"):
        fhir.load_bundle(str(path))
    bad = _bundle()
    del bad["entry"][0]["resource"]["birthDate"]
    path.write_text(json.dumps(bad))
    with pytest.raises(CaseFileError, match=r"entry\[0\] Patient/pat-1, field 'birthDate'"):
        fhir.load_bundle(str(path))
    bad = _bundle()
    bad["entry"][3]["resource"]["valueQuantity"]["value"] = "3.1"
    path.write_text(json.dumps(bad))
    with pytest.raises(CaseFileError, match=r"Observation/o-1, field 'valueQuantity.value'"):
        fhir.load_bundle(str(path))
    path.write_text(json.dumps({"resourceType": "Bundle"}))
    with pytest.raises(CaseFileError, match=r"field 'entry'.*missing"):
        fhir.load_bundle(str(path))


@needs_data
def test_synthea_csv() -> None:
    folder = DATA / "synthea" / "csv"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    cases = synthea.load_csv(str(folder))
    assert len(cases) == 11  # every one of the 11 patients has a disorder
    for c in cases:
        _valid(c)
    by_id = {c.id: c for c in cases}
    sepsis = by_id["synthea-6872def5-772f-427c-3053-de6e1c71ce0a"]
    assert sepsis.diagnosis.name == "Sepsis" and sepsis.profile.demographics.age == 25
    assert "lactate" in sepsis.key_exams
    dm = next(c for c in cases if c.diagnosis.name.startswith("Neuropathy due to type 2"))
    assert "hemoglobin A1c" in dm.key_exams


def test_synthea_csv_missing_column(tmp_path: Path) -> None:
    for name, header in [
        ("patients.csv", "Id,BIRTHDATE,GENDER,RACE,ETHNICITY"),
        ("encounters.csv", "Id,START,STOP,PATIENT,DESCRIPTION"),
        ("conditions.csv", "START,STOP,PATIENT,ENCOUNTER,CODE"),  # no DESCRIPTION
        ("observations.csv", "DATE,PATIENT,ENCOUNTER,CATEGORY,CODE,DESCRIPTION,VALUE,UNITS,TYPE"),
        ("medications.csv", "START,STOP,PATIENT,DESCRIPTION"),
        ("allergies.csv", "START,PATIENT,DESCRIPTION"),
    ]:
        (tmp_path / name).write_text(header + "\n")
    with pytest.raises(CaseFileError, match=r"conditions\.csv, line 1, field 'DESCRIPTION'"):
        synthea.load_csv(str(tmp_path))


# --- DDXPlus -------------------------------------------------------------------------------------


@needs_data
def test_ddxplus_ontology() -> None:
    if not DDXPLUS.is_dir():
        pytest.skip(f"{DDXPLUS} is absent")
    onto = ddxplus.load(str(DDXPLUS))
    assert len(onto.conditions) == 49 and len(onto.evidences) == 223
    assert onto.question("E_91").startswith("Do you have a fever")
    types = [e.data_type for e in onto.evidences.values()]
    assert (types.count("B"), types.count("C"), types.count("M")) == (208, 9, 6)
    travel = onto.evidences["E_204"]
    assert travel.is_antecedent and travel.meaning("V_9") == "Europe"
    pneumo = onto.condition("spontaneous pneumothorax")
    assert pneumo.icd10 == "J93" and pneumo.severity == 2
    codes = [e.code for e in onto.evidences_for("Spontaneous pneumothorax")]
    assert codes[: len(pneumo.symptoms)] == list(pneumo.symptoms) and "E_204" in codes
    assert onto.condition("Pneumonia").icd10_all == ("J17", "J18")
    assert all(c.icd10 == c.icd10.upper() for c in onto.conditions.values())
    case = ddxplus.case_from_evidences(
        onto, "Pneumonia", ["E_91", "E_56_@_7", "E_204_@_V_9"], age=40, sex="M"
    )
    assert case.diagnosis.icd10 == "J17" and case.profile.demographics.sex == "male"
    assert [s.detail for s in case.profile.symptoms] == ["", "7"]
    assert case.profile.past_history[0].endswith("Europe")
    assert ddxplus.parse_evidence("E_55_@_V_89") == ("E_55", "V_89")


def test_ddxplus_broken(tmp_path: Path) -> None:
    ev = {
        "E_1": {
            "name": "E_1",
            "question_en": "Do you have a fever?",
            "is_antecedent": False,
            "default_value": 0,
            "value_meaning": {},
            "possible-values": [],
            "data_type": "B",
        }
    }
    cond = {
        "Flu": {
            "condition_name": "Flu",
            "icd10-id": "J11",
            "symptoms": {"E_1": {}},
            "antecedents": {},
            "severity": 3,
        }
    }
    (tmp_path / "release_evidences.json").write_text(json.dumps(ev))
    (tmp_path / "release_conditions.json").write_text(json.dumps(cond))
    assert ddxplus.load(str(tmp_path)).question("E_1") == "Do you have a fever?"
    bad = json.loads(json.dumps(cond))
    bad["Flu"]["severity"] = "high"
    (tmp_path / "release_conditions.json").write_text(json.dumps(bad))
    with pytest.raises(CaseFileError, match=r"condition 'Flu', field 'severity'"):
        ddxplus.load(str(tmp_path))
    bad = json.loads(json.dumps(ev))
    del bad["E_1"]["data_type"]
    (tmp_path / "release_evidences.json").write_text(json.dumps(bad))
    with pytest.raises(CaseFileError, match=r"evidence 'E_1', field 'data_type': missing"):
        ddxplus.load(str(tmp_path))
    (tmp_path / "release_evidences.json").write_text(json.dumps(ev, indent=1)[:40])
    with pytest.raises(CaseFileError, match=r"release_evidences\.json, line \d+: malformed"):
        ddxplus.load(str(tmp_path))


# --- import strings as a cluster spec names them -------------------------------------------------


@needs_data
def test_loaders_resolve_from_import_strings() -> None:
    import importlib

    def resolve(target: str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    assert len(resolve("cases.loaders.agentclinic:load")(path=str(AGENTCLINIC))) == 107
    assert len(resolve("cases.loaders.fhir:load_bundles")(directory=str(SYNTHEA_FHIR))) == 2
    assert len(resolve("cases.loaders.ddxplus:load")(directory=str(DDXPLUS)).conditions) == 49
    iv = resolve("cases.loaders.mimic:load_mimic_iv")(directory=str(FIXTURES / "mimic_iv"))
    assert len(iv) == 2
