"""Patients: the record patient's multi-part questions and test results; the LLM patient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from structlog.testing import capture_logs

from actors.patient import (
    EVIDENCE_SOCIAL,
    EVIDENCE_SYMPTOMS,
    NO_RESULTS,
    UNCLEAR,
    LLMPatient,
    RecordPatient,
    answer_question,
    leak_terms,
    split_question,
)
from cases import builtin
from cases.loaders import ddxplus
from cases.symptoms import SYMPTOMS
from cases.text import mentions
from engine.actor import ActorError, ConfigError
from protocols import ErrorCode, decode, encode
from protocols.case import (
    Case,
    Demographics,
    Diagnosis,
    ExamRecord,
    PatientProfile,
    ReferenceRange,
    Symptom,
)
from protocols.messages import PatientQuestion, PatientReply
from tests.fake_openai import serve_fake_openai

CASE = Case(
    id="t-cap",
    profile=PatientProfile(
        demographics=Demographics(age=58, sex="male"),
        chief_complaint="cough",
        history_of_present_illness="58-year-old man with cough and fever for 4 days.",
        symptoms=[
            Symptom("cough", True, "I've been coughing up green phlegm for 4 days"),
            Symptom("fever", True, "I've been running a temperature"),
            Symptom("chest pain", False),
        ],
        past_history=["type 2 diabetes"],
        medications=["metformin 500 mg twice daily"],
        allergies=["penicillin"],
        family_history=["my father had a heart attack"],
        social_history=["I smoke 10 cigarettes a day", "I drink a couple of beers at the weekend"],
    ),
    exams=[
        ExamRecord(
            "white blood cell count",
            "lab",
            "15.2 x10^9/L (high)",
            15.2,
            "x10^9/L",
            ReferenceRange(4.0, 11.0),
        ),
        ExamRecord("C-reactive protein", "lab", "142 mg/L (high)", 142.0, "mg/L"),
        ExamRecord("chest X-ray", "imaging", "right lower lobe consolidation"),
        ExamRecord("sputum culture", "microbiology", "Streptococcus pneumoniae isolated"),
    ],
    key_exams=["chest X-ray", "white blood cell count"],
    diagnosis=Diagnosis(
        name="community-acquired pneumonia", icd10="J18.9", synonyms=["pneumonia", "CAP"]
    ),
)
PATIENT = RecordPatient()


def ask(question: str, case: Case = CASE, patient: RecordPatient = PATIENT) -> str:
    return patient.answer(PatientQuestion(episode_id="ep", case=case, question=question)).text


# --- record patient: multi-part questions --------------------------------------------------------


def test_split_question() -> None:
    assert split_question("Any allergies, and what medications do you take?") == [
        "Any allergies",
        "what medications do you take",
    ]
    assert split_question("How old are you and when did it start?") == [
        "How old are you",
        "when did it start",
    ]
    assert split_question("Do you have a fever? Any cough. Do you smoke!") == [
        "Do you have a fever",
        "Any cough",
        "Do you smoke",
    ]
    assert split_question("Do you smoke or drink?") == ["Do you smoke or drink"]
    assert split_question("Do you have cough and fever?") == ["Do you have cough and fever"]
    assert split_question("") == [] and split_question(" ?? ") == []


def test_multi_part_questions_answer_every_part_and_nothing_else() -> None:
    reply = ask("Any allergies, and what medications do you take?")
    assert "penicillin" in reply and "metformin" in reply
    assert "father" not in reply and "cigarettes" not in reply and "58" not in reply
    reply = ask("How old are you and when did it start?")
    assert "58 years old" in reply and "4 days ago" in reply and "penicillin" not in reply
    reply = ask("Do you have a fever? Any chest pain? And do you smoke?")
    assert reply.startswith("Yes, I've been running a temperature.")
    assert "No, I haven't had chest pain." in reply and "10 cigarettes" in reply
    assert "metformin" not in reply and "phlegm" not in reply
    reply = ask("Do you smoke or drink?")  # two social topics in one clause
    assert "10 cigarettes" in reply and "beers" in reply
    reply = ask("Any allergies, and do you take any medications, and does it run in your family?")
    assert all(x in reply for x in ("penicillin", "metformin", "heart attack"))


def test_multi_part_drops_unclear_parts_and_repeats() -> None:
    assert ask("Hello doctor. Do you have a fever?") == "Yes, I've been running a temperature."
    assert ask("Do you smoke? Do you smoke?") == ask("Do you smoke?")
    assert ask("Hello. Nice weather. Lovely day.") == UNCLEAR
    # the diagnosis is still deflected inside a multi-part question, never named
    reply = ask("I think you have pneumonia. Am I right? How old are you?")
    assert "58 years old" in reply and not mentions(reply, leak_terms(CASE))


# --- record patient: test results ----------------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    [
        "What was your white blood cell count?",
        "What is your WBC?",
        "Do you know your CRP level?",
        "What did your chest X-ray show?",
        "What did the sputum culture grow?",
        "What were your lab results?",
        "Have you had any blood tests?",
        "Is your hemoglobin low?",
        "What's your blood sugar level?",
    ],
)
def test_patient_does_not_know_test_results(question: str) -> None:
    reply = ask(question)
    assert reply == NO_RESULTS
    for rec in CASE.exams:
        assert rec.result not in reply
        assert rec.value is None or f"{rec.value:g}" not in reply


def test_symptom_questions_are_not_test_questions() -> None:
    assert ask("Have you had a temperature?").startswith("Yes")  # fever, not the vital sign
    assert ask("Do you have blood in your urine?").startswith("No")
    assert ask("Do you take any medication for your sugar?").startswith("I take metformin")


def test_bank_patients_never_reveal_exam_results() -> None:
    for case in builtin(200)[::4]:
        for rec in case.exams:
            if rec.category == "physical" or len(rec.result) < 6:
                continue
            for q in (f"What was your {rec.name}?", f"What did the {rec.name} show?"):
                reply = ask(q, case)
                assert rec.result not in reply, (case.id, q, reply)
                assert not mentions(reply, leak_terms(case)), (case.id, q, reply)


def test_record_leak_is_flagged_and_logged() -> None:
    sym = Symptom("cough", True, "the doctor last year said it was pneumonia, J18.9")
    leaky = msgspec.structs.replace(
        CASE, profile=msgspec.structs.replace(CASE.profile, symptoms=[sym])
    )
    with capture_logs() as logs:
        reply = PATIENT.answer(
            PatientQuestion(episode_id="ep-7", case=leaky, question="Any cough?")
        )
    assert reply.leaked and not mentions(reply.text, leak_terms(leaky))
    assert "J18" not in reply.text
    assert [e["event"] for e in logs] == ["patient.leak_redacted"]
    assert logs[0]["episode_id"] == "ep-7" and logs[0]["backend"] == "record"


def test_answers_are_deterministic() -> None:
    qs = ["What brings you in?", "Any allergies and do you smoke?", "What was your CRP?"]
    assert [answer_question(CASE, q) for q in qs] == [answer_question(CASE, q) for q in qs]


# --- LLM patient ---------------------------------------------------------------------------------


async def _llm(
    answers: list[str], questions: list[tuple[str, list[str]]], case: Case = CASE
) -> tuple[list[PatientReply | ActorError], list[dict[str, Any]], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def reply(path: str, body: dict[str, Any]) -> str:
        seen.append(body)
        text = answers.pop(0)
        if text == "HTTP 500":
            raise RuntimeError("model exploded")
        return text

    out: list[PatientReply | ActorError] = []
    async with trio.open_nursery() as nursery:
        url = await serve_fake_openai(nursery, reply)
        patient = LLMPatient.from_config({"endpoint": {"base_url": url, "model": "patient-m"}})
        with capture_logs() as logs:
            for question, asked in questions:
                request = PatientQuestion(
                    episode_id="ep", case=case, question=question, asked=asked
                )
                try:
                    out.append(await patient.answer(request))
                except ActorError as exc:
                    out.append(exc)
        await patient.close()
        nursery.cancel_scope.cancel()
    return out, seen, logs


async def test_llm_patient_answers_from_the_profile_only() -> None:
    replies, seen, logs = await _llm(
        ["  I've had a cough for about four days, doctor.  "],
        [("When did the cough start?", ["What brings you in?", "Any allergies?"])],
    )
    assert replies == [PatientReply(text="I've had a cough for about four days, doctor.")]
    assert logs == []
    body = seen[0]
    assert body["model"] == "patient-m"
    system, user = (m["content"] for m in body["messages"])
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    for fact in ("58-year-old male", "coughing up green phlegm", "metformin", "penicillin"):
        assert fact in system, fact
    assert "You do NOT have: chest pain." in system
    # never the diagnosis, its synonyms or code, never the exam results
    assert not mentions(system + user, leak_terms(CASE))
    for rec in CASE.exams:
        assert rec.result not in system and rec.name not in system
    assert "142" not in system and "15.2" not in system
    # earlier questions as context, the current one last
    assert "1. What brings you in?" in user and "2. Any allergies?" in user
    assert user.endswith("When did the cough start?")


async def test_llm_patient_prompt_redacts_a_record_that_names_the_diagnosis() -> None:
    told = msgspec.structs.replace(
        CASE.profile,
        history_of_present_illness="He thinks it is pneumonia again.",
        past_history=["pneumonia (J18.9) in 2019"],
    )
    case = msgspec.structs.replace(CASE, profile=told)
    _, seen, _ = await _llm(["ok"], [("Any past illnesses?", [])], case)
    system = seen[0]["messages"][0]["content"]
    assert not mentions(system, leak_terms(case)) and "J18" not in system
    assert "He thinks it is a problem again." in system


async def test_llm_patient_leak_is_redacted_flagged_and_logged() -> None:
    replies, _, logs = await _llm(
        [
            "Honestly I think it's Pneumonia, my last doctor wrote J18.9 on the form.",
            "Could it be community acquired pneumonia? Or CAP?",
            "I've got no idea what's causing it.",
            "",
        ],
        [("What do you think it is?", [])] * 4,
    )
    first, second, clean, empty = replies
    for r in (first, second):
        assert isinstance(r, PatientReply) and r.leaked
        assert not mentions(r.text, leak_terms(CASE)) and "J18" not in r.text
        assert "that" in r.text
    assert first.text.startswith("Honestly I think it's that")  # type: ignore[union-attr]
    assert isinstance(clean, PatientReply) and not clean.leaked
    assert empty == PatientReply(text=UNCLEAR)
    leaks = [e for e in logs if e["event"] == "patient.leak_redacted"]
    assert len(leaks) == 2 and leaks[0]["backend"] == "llm" and leaks[0]["case_id"] == CASE.id
    assert decode(encode(first)) == first  # type: ignore[arg-type]


async def test_llm_patient_endpoint_failure_is_an_actor_error() -> None:
    replies, _, _ = await _llm(["HTTP 500"], [("Any cough?", [])])
    (err,) = replies
    assert isinstance(err, ActorError) and err.code == ErrorCode.WORKER_FAILED
    assert "llm patient" in err.message and "HTTP 500" in err.message


def test_llm_patient_config() -> None:
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    patient = LLMPatient.from_config({"endpoint": endpoint, "max_earlier": 5})
    assert patient.config.max_earlier == 5 and LLMPatient.service == "patient"
    assert set(patient.handlers()) == {PatientQuestion}
    for raw in ({}, {"endpoint": endpoint, "temperature": 0.5}, {"endpoint": {"model": "m"}}):
        with pytest.raises(ConfigError):
            LLMPatient.from_config(raw)
    many = [f"question {i}?" for i in range(40)]
    messages = patient.messages(
        PatientQuestion(episode_id="e", case=CASE, question="Now?", asked=many)
    )
    user = messages[1]["content"]
    assert "question 39?" in user and "question 34?" not in user and user.endswith("Now?")


# --- record patient: DDXPlus evidence questions --------------------------------------------------

DDXPLUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ddxplus"
needs_ddxplus = pytest.mark.skipif(
    not (DDXPLUS / "release_evidences.json").is_file(),
    reason=f"DDXPlus metadata not found at {DDXPLUS} (shared data not mounted)",
)


@pytest.fixture(scope="module")
def ddx_patient() -> RecordPatient:
    patient = RecordPatient.from_config({"ddxplus": str(DDXPLUS)})
    assert isinstance(patient, RecordPatient)
    trio.run(patient.start)
    assert patient.evidence is not None
    return patient


def _ddx_case(patient: RecordPatient) -> Case:
    assert patient.evidence is not None
    evidences = [
        "E_91",  # fever (B)
        "E_201",  # cough (B)
        "E_55_@_V_55",  # pain location (M): side of the chest(R)
        "E_55_@_V_101",  # ... and upper chest
        "E_54_@_V_192",  # pain character (M): sharp
        "E_54_@_V_181",  # ... and burning
        "E_56_@_7",  # pain intensity (C, 0-10)
        "E_57_@_V_123",  # pain radiates: nowhere
        "E_130_@_V_157",  # rash colour (C, coded): red
        "E_204_@_V_1",  # travel (M antecedent): West Africa
        "E_79",  # smokes (B antecedent)
    ]
    onto = patient.evidence.ontology
    return ddxplus.case_from_evidences(onto, "Pneumonia", evidences, age=40, sex="M")


def test_record_patient_ddxplus_config() -> None:
    assert RecordPatient().config.ddxplus == "" and RecordPatient().evidence is None
    trio.run(RecordPatient().start)  # default: no data needed
    bad = RecordPatient.from_config({"ddxplus": "/nonexistent/ddxplus"})
    with pytest.raises(ConfigError, match="DDXPlus.*/nonexistent/ddxplus.*release_evidences"):
        trio.run(bad.start)
    with pytest.raises(ConfigError):
        RecordPatient.from_config({"ddxplus": "x", "typo": 1})


@needs_ddxplus
def test_record_patient_ddxplus_broken_file(tmp_path: Path) -> None:
    (tmp_path / "release_evidences.json").write_text("{not json")
    bad = RecordPatient.from_config({"ddxplus": str(tmp_path)})
    with pytest.raises(ConfigError, match="release_evidences.json"):
        trio.run(bad.start)


@needs_ddxplus
def test_ddxplus_case_answers_its_evidence_questions(ddx_patient: RecordPatient) -> None:
    case = _ddx_case(ddx_patient)

    def say(q: str) -> str:
        return ask(q, case, ddx_patient)

    # binary, verbatim and in everyday words (through the vocabulary mapping)
    assert say("Do you have a fever (either felt or measured with a thermometer)?") == "Yes, I do."
    assert say("Do you have a fever?").startswith("Yes")
    assert say("Do you have a cough?") == "Yes, I do."
    # multi-choice and categorical: the English meanings, never the codes
    assert say("Characterize your pain:") == "Sharp and burning."
    where = say("Do you feel pain somewhere?")
    assert "right side of the chest" in where and "upper chest" in where and "V_" not in where
    assert "upper chest" in say("Where does it hurt?")
    assert say("Do you have chest pain?").startswith("Yes") and "upper chest" in say(
        "Any chest pain?"
    )
    assert say("How intense is the pain?") == "I'd say 7 out of 10."
    assert say("How bad is the pain?") == "I'd say 7 out of 10."
    assert say("What color is the rash?") == "Red."
    assert say("Does the pain radiate to another location?").startswith("No")  # "nowhere"
    # antecedents: travel (with the region) and smoking, verbatim and in everyday words
    travel = say("Have you traveled out of the country in the last 4 weeks?")
    assert travel.startswith("Yes") and "West Africa" in travel and "V_1" not in travel
    assert "West Africa" in say("Have you travelled abroad recently?")
    assert say("Do you smoke cigarettes?") == "Yes, I do." and say("Do you smoke?") == "Yes, I do."
    # several evidence questions at once: each answered, in order, even when the words repeat
    reply = say("Do you have a cough? Do you have diabetes? Do you smoke cigarettes?")
    assert reply == "Yes, I do. No, I don't. Yes, I do."
    # the history rules see no raw evidence questions
    assert say("What brings you in?") == "I've come in because of fever."
    assert "?" not in say("Any past medical history?")


@needs_ddxplus
def test_ddxplus_case_denies_absent_evidences(ddx_patient: RecordPatient) -> None:
    case = _ddx_case(ddx_patient)
    for q in (
        "Have you had diarrhea or an increase in stool frequency?",
        "Do you have diabetes?",
        "Have you had chills or shivers?",
        "Are you feeling nauseous or do you feel like vomiting?",
        "Is the rash swollen?",
        "Have you ever had pneumonia?",
    ):
        assert ask(q, case, ddx_patient).startswith("No"), q
    assert ask("Any nausea?", case, ddx_patient).startswith("No")
    assert ask("Do you have a headache?", case, ddx_patient).startswith(
        "No"
    )  # pain is in the chest
    # the diagnosis is never named
    for q in ("Do you have pneumonia?", "What do you think is wrong with me?", "Is it pneumonia?"):
        reply = ask(q, case, ddx_patient)
        assert not mentions(reply, leak_terms(case)), (q, reply)


@needs_ddxplus
def test_bank_case_answers_ddxplus_questions_through_the_mapping(
    ddx_patient: RecordPatient,
) -> None:
    fever_q = "Do you have a fever (either felt or measured with a thermometer)?"
    assert ddx_patient.evidence is not None
    assert ddx_patient.evidence.match(fever_q).code == "E_91"  # type: ignore[union-attr]
    # CASE: fever present, chest pain absent, smokes, no travel
    assert ask(fever_q, CASE, ddx_patient) == "Yes, I've been running a temperature."
    assert ask("Have you had chills or shivers?", CASE, ddx_patient).startswith("No")
    assert "10 cigarettes" in ask("Do you smoke cigarettes?", CASE, ddx_patient)
    travel = ask("Have you traveled out of the country in the last 4 weeks?", CASE, ddx_patient)
    assert travel.startswith("No")
    assert ask("Do you have a cough?", CASE, ddx_patient).startswith("Yes, I've been coughing")
    no_fever = next(
        c
        for c in builtin(60)
        if any(s.name == "fever" and not s.present for s in c.profile.symptoms)
    )
    assert ask(fever_q, no_fever, ddx_patient) == "No, I haven't had a fever."
    # the table only names known evidences and known symptoms
    onto = ddx_patient.evidence.ontology
    assert set(EVIDENCE_SYMPTOMS) <= set(onto.evidences)
    assert set(EVIDENCE_SOCIAL) <= set(onto.evidences)
    assert all(n in SYMPTOMS for names in EVIDENCE_SYMPTOMS.values() for n in names)


@needs_ddxplus
def test_evidence_matching_does_not_misfire(ddx_patient: RecordPatient) -> None:
    index = ddx_patient.evidence
    assert index is not None
    unrelated = [
        "What brings you in today?",
        "How old are you?",
        "When did it start?",
        "Any allergies?",
        "Do you take any medications?",
        "Does anyone in your family have heart disease?",
        "What did your chest X-ray show?",
        "What was your white blood cell count?",
        "How are you feeling?",
        "Hello doctor.",
        "Is the pain worse when you breathe?",  # close to several: no guess
        "Do you have chest pain?",  # not "chest pain even at rest"
        "Do you have a fever?",  # not the verbatim question: the vocabulary answers it
    ]
    for q in unrelated:
        assert index.match(q) is None, q
    # on bank cases, questions that match no evidence are answered exactly as without DDXPlus
    for case in builtin(100)[::10]:
        for q in unrelated:
            assert ask(q, case, ddx_patient) == ask(q, case), (case.id, q)
