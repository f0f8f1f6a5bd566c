"""The embedded backends, called directly (no sockets): patient, examiner, judge, agents."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.agent import (
    GENERAL_QUESTIONS,
    HeuristicAgent,
    HeuristicAgentConfig,
    RandomAgent,
    RandomAgentConfig,
    posterior,
)
from actors.examiner import RecordExaminer, RecordExaminerConfig
from actors.judge import RulesJudge, RulesJudgeConfig, exam_scores, normalise_diagnosis
from actors.patient import DEFLECT, RecordPatient, diagnosis_terms
from cases import CONDITIONS, builtin, default_catalogue
from cases.bank import condition_by_name
from cases.symptoms import SYMPTOMS, question_for
from cases.text import mentions
from engine.actor import ConfigError
from protocols import decode, encode
from protocols.case import Case, Demographics, Diagnosis, ExamRecord, PatientProfile, Symptom
from protocols.messages import (
    ActReply,
    ActRequest,
    AskPatient,
    Diagnose,
    ExamQuery,
    ExamReply,
    ExamResults,
    Intro,
    OrderExam,
    PatientAnswer,
    PatientQuestion,
    PatientReply,
    ScoreRequest,
    Step,
    Verdict,
)

CASES = builtin(2000)
PATIENT = RecordPatient()
EXAMINER = RecordExaminer()
JUDGE = RulesJudge()


def ask(case: Case, question: str) -> PatientReply:
    return PATIENT.answer(PatientQuestion(episode_id="ep", case=case, question=question))


def exam(case: Case, name: str, examiner: RecordExaminer = EXAMINER) -> ExamReply:
    return examiner.result(ExamQuery(episode_id="ep", case=case, exam=name))


def case_of(name: str, index: int = 0) -> Case:
    return [c for c in CASES if c.diagnosis.name == name][index]


# --- actor plumbing -------------------------------------------------------------------------------


def test_services_handlers_and_configs() -> None:
    assert RecordPatient.service == "patient"
    assert RecordExaminer.service == "examiner"
    assert RandomAgent.service == HeuristicAgent.service == "agent"
    assert RulesJudge.service == "judge"
    assert set(PATIENT.handlers()) == {PatientQuestion}
    assert set(EXAMINER.handlers()) == {ExamQuery}
    assert set(JUDGE.handlers()) == {ScoreRequest}
    assert set(HeuristicAgent().handlers()) == {ActRequest}
    assert isinstance(RecordPatient.from_config(None), RecordPatient)
    assert RecordExaminer.from_config({"fallback": "none"}).config.fallback == "none"
    assert RulesJudge.from_config({"cost": -0.01}).config.cost == -0.01
    assert RandomAgent.from_config({"seed": 3}).config.seed == 3
    assert HeuristicAgent.from_config({"confident": 0.8}).config.confident == 0.8
    for cls, raw in [
        (RecordExaminer, {"fallbak": "normal"}),
        (RecordExaminer, {"fallback": "neighbour"}),
        (RulesJudge, {"diagnossis": 1.0}),
        (RandomAgent, {"seeds": 1}),
        (HeuristicAgent, {"confidence": 0.5}),
        (RecordPatient, {"anything": 1}),
    ]:
        with pytest.raises(ConfigError):
            cls.from_config(raw)


def test_replies_are_valid_wire_messages() -> None:
    case = CASES[0]
    intro = Intro(age=30, sex="female", chief_complaint="cough", max_turns=12)
    replies = [
        ask(case, "Do you have a fever?"),
        exam(case, "CBC"),
        HeuristicAgent().act(ActRequest(episode_id="e", intro=intro, steps=[])),
        JUDGE.score(
            ScoreRequest(
                episode_id="e",
                case=case,
                diagnosis=None,
                exams=[],
                cost=0,
                turns=0,
                format_errors=0,
            )
        ),
    ]
    for reply in replies:
        assert decode(encode(reply)) == reply


# --- patient --------------------------------------------------------------------------------------

_STANDARD = (
    *GENERAL_QUESTIONS,
    "Any allergies?",
    "What is your past medical history?",
    "Tell me about your social history.",
    "Do you use recreational drugs?",
    "Has anyone around you been sick?",
    "Are you male or female?",
    "How would you describe it?",
    "What's the weather like?",
)


def test_patient_never_leaks_on_ordinary_questions() -> None:
    for case in CASES[:300]:
        terms = diagnosis_terms(case)
        questions = [*_STANDARD, *(question_for(s.name) for s in case.profile.symptoms)]
        for q in questions:
            reply = ask(case, q)
            assert not reply.leaked, (case.id, q, reply.text)
            assert not mentions(reply.text, terms), (case.id, q, reply.text)


_TEMPLATES = (
    "{}",
    "Do you have {}?",
    "Is it {}?",
    "I think you have {}. Am I right?",
    "Have you ever been diagnosed with {}?",
    "Do you have a history of {}?",
    "Does {} run in your family?",
    "Could this be {} or something else?",
    "Tell me about your {} symptoms",
    "When did the {} start?",
    "Are you taking medication for {}?",
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), index=st.integers(0, len(CASES) - 1))
def test_patient_never_names_the_diagnosis(data: st.DataObject, index: int) -> None:
    case = CASES[index]
    terms = diagnosis_terms(case)
    all_terms = [t for c in CONDITIONS for t in (c.name, *c.synonyms)]
    question = data.draw(
        st.one_of(
            st.builds(
                lambda t, term: t.format(term),
                st.sampled_from(_TEMPLATES),
                st.sampled_from(list(terms) + all_terms),
            ),
            st.builds(
                lambda t, term: t.format(term.upper()),
                st.sampled_from(_TEMPLATES),
                st.sampled_from(terms),
            ),
            st.text(max_size=80),
            st.sampled_from(_STANDARD),
        )
    )
    reply = ask(case, question)
    assert not mentions(reply.text, terms), (question, reply.text)
    assert reply.text.strip()


def test_patient_deflects_questions_about_the_diagnosis() -> None:
    case = case_of("community-acquired pneumonia")
    for q in ("Do you have pneumonia?", "Is it a heart attack?", "What is your diagnosis?"):
        assert ask(case, q).text == DEFLECT


def test_patient_progressive_disclosure() -> None:
    case = case_of("diabetic ketoacidosis")
    p = case.profile
    age = ask(case, "How old are you?").text
    assert str(p.demographics.age) in age and p.chief_complaint not in age
    complaint = ask(case, "What brings you in today?").text
    assert p.chief_complaint in complaint
    assert not any(m in complaint for m in p.medications)
    allergies = ask(case, "Do you have any allergies?").text
    assert all(a in allergies for a in p.allergies)
    assert not any(m in allergies for m in p.medications)
    meds = ask(case, "What medications are you taking?").text
    assert all(m in meds for m in p.medications) or "don't take" in meds
    onset = ask(case, "When did it start?").text
    assert onset.startswith("It started") and "ago" in onset
    for s in p.symptoms:
        reply = ask(case, question_for(s.name)).text
        assert reply.startswith("Yes" if s.present else "No"), (s, reply)
        assert re.search(r"\b(I|my|me)\b", reply), reply  # first person


def test_patient_denies_symptoms_the_case_does_not_list() -> None:
    case = case_of("acute gout")
    listed = {s.name for s in case.profile.symptoms}
    for name in SYMPTOMS:
        if name not in listed:
            assert ask(case, question_for(name)).text.startswith("No, I haven't")


def test_patient_answers_each_named_symptom() -> None:
    case = case_of("influenza")
    fever = next((s for s in case.profile.symptoms if s.name == "fever"), None)
    reply = ask(case, "Do you have a fever or a rash?").text
    assert reply.count(".") >= 2
    assert reply.startswith("Yes" if fever is not None and fever.present else "No")
    assert "No, I haven't had a rash." in reply


def test_patient_unclear_and_unknown() -> None:
    case = CASES[0]
    assert "not sure what you mean" in ask(case, "What's the weather like?").text
    assert "not sure what you mean" in ask(case, "").text
    assert ask(case, "Do you have purple elbows?").text.startswith("No")


def test_patient_redacts_a_record_that_names_the_diagnosis() -> None:
    base = case_of("acute cystitis")
    sym = Symptom(name="painful urination", present=True, detail="I think it's a UTI again")
    case = msgspec.structs.replace(
        base, profile=msgspec.structs.replace(base.profile, symptoms=[sym])
    )
    reply = ask(case, question_for("painful urination"))
    assert reply.leaked and not mentions(reply.text, diagnosis_terms(case))


# --- examiner -------------------------------------------------------------------------------------


def test_examiner_returns_the_record() -> None:
    case = case_of("diabetic ketoacidosis")
    rec = next(r for r in case.exams if r.name == "glucose")
    result = exam(case, "blood sugar").result
    assert (result.name, result.value, result.result) == ("glucose", rec.value, rec.result)
    assert result.requested == "blood sugar"
    assert result.found and result.source == "record"
    assert result.cost == default_catalogue().get("glucose").cost


def test_examiner_falls_back_to_normal_values_idempotently() -> None:
    case = case_of("acute gout")
    assert all(r.name != "MRI brain" for r in case.exams)
    first = exam(case, "MRI brain").result
    assert first.found and first.source == "normal" and first.name == "MRI brain"
    assert first.result == default_catalogue().get("MRI brain").normal
    numeric = [e for e in default_catalogue().entries if e.is_numeric]
    held = {r.name for r in case.exams}
    for entry in numeric:
        if entry.name in held:
            continue
        a, b = exam(case, entry.name).result, exam(case, entry.name).result
        assert a == b  # a retry gives the same value
        assert a.source == "normal" and a.value is not None
        ref = entry.reference
        assert (ref.low is None or a.value >= ref.low) and (ref.high is None or a.value <= ref.high)
    # another case gets its own draw
    others = {
        exam(c, "lipase").result.value
        for c in CASES[:50]
        if "lipase" not in {r.name for r in c.exams}
    }
    assert len(others) > 5


def test_examiner_unknown_exam() -> None:
    result = exam(CASES[0], "banana scan").result
    assert not result.found and result.name == "" and result.cost == 0
    assert "is not in the exam catalogue" in result.result
    assert result.requested == "banana scan"


def test_examiner_panels() -> None:
    case = case_of("community-acquired pneumonia")
    result = exam(case, "CBC").result
    cat = default_catalogue()
    assert result.name == "complete blood count" and result.value is None
    for comp in cat.get("complete blood count").panel:
        assert f"{comp}: " in result.result
    wbc = next(r for r in case.exams if r.name == "white blood cell count")
    assert f"white blood cell count: {wbc.result}" in result.result
    assert result.source == "record"  # the bank holds whole blood counts
    mixed = exam(case, "vital signs").result
    assert mixed.cost == cat.get("vital signs").cost
    lp = exam(case, "lumbar puncture").result  # not held: every component normal
    assert lp.source == "normal"


def test_examiner_fallback_none() -> None:
    examiner = RecordExaminer(RecordExaminerConfig(fallback="none"))
    case = case_of("acute gout")
    result = exam(case, "MRI brain", examiner).result
    assert result.found and result.source == "none" and "not available" in result.result
    assert exam(case, "uric acid", examiner).result.source == "record"


def test_examiner_matches_record_names_from_other_sources() -> None:
    case = Case(
        id="ext-1",
        profile=PatientProfile(demographics=Demographics(age=40, sex="male"), chief_complaint="x"),
        exams=[ExamRecord(name="Haemoglobin", category="lab", result="9.1 g/dL", value=9.1)],
        diagnosis=Diagnosis(name="anemia"),
    )
    result = exam(case, "Hb").result
    assert result.source == "record" and result.value == 9.1


# --- judge ----------------------------------------------------------------------------------------


def score(case: Case, name: str | None, exams: list[str] | None = None, **kw) -> Verdict:
    dx = Diagnose(name=name) if name is not None else None
    fields = {"cost": 0.0, "turns": 1, "format_errors": 0, **kw}
    return JUDGE.score(
        ScoreRequest(episode_id="e", case=case, diagnosis=dx, exams=exams or [], **fields)
    )


def test_judge_exact_and_synonym() -> None:
    case = case_of("acute myocardial infarction")
    for name, match in [
        ("acute myocardial infarction", "exact"),
        ("Acute Myocardial Infarction.", "exact"),
        ("heart attack", "synonym"),
        ("  STEMI ", "synonym"),
    ]:
        v = score(case, name)
        assert (v.correct, v.diagnosis_score, v.match) == (True, 1.0, match), name


def test_judge_never_judges_by_substring() -> None:
    pneumonia = case_of("community-acquired pneumonia")
    for name in [
        "not pneumonia",
        "no pneumonia",
        "pneumonia ruled out",
        "aspiration pneumonia",
        "chronic pneumonia",
        "Incorrect",
        "community",
        "",
    ]:
        v = score(pneumonia, name)
        assert not v.correct and v.diagnosis_score == 0.0 and v.match == "none", name
    # the DiagGym bug: "incorrect" contains "correct"
    correct = Case(
        id="x",
        profile=pneumonia.profile,
        diagnosis=Diagnosis(name="Correct", synonyms=["right answer"]),
    )
    assert not score(correct, "incorrect").correct
    assert not score(correct, "not the right answer").correct
    assert score(correct, "correct").correct
    assert score(pneumonia, None).match == "none"


def test_judge_icd10_partial_credit() -> None:
    aura = case_of("migraine with aura")
    v = score(aura, "migraine")  # a synonym of migraine without aura: G43.009 vs G43.109
    assert (v.correct, v.diagnosis_score, v.match) == (False, 0.5, "icd10-partial")
    assert score(case_of("toxic multinodular goiter"), "Graves' disease").diagnosis_score == 0.5
    assert score(case_of("panic disorder"), "anxiety disorder").diagnosis_score == 0.5
    assert score(case_of("viral pharyngitis"), "strep throat").diagnosis_score == 0.5
    assert score(case_of("acute cystitis"), "pyelonephritis").diagnosis_score == 0.0
    code = score(case_of("community-acquired pneumonia"), "J18.9")
    assert code.correct and code.match == "icd10"
    assert score(case_of("community-acquired pneumonia"), "J18").diagnosis_score == 0.5
    custom = RulesJudge(RulesJudgeConfig(icd10_partial=0.25))
    v = custom.score(
        ScoreRequest(
            episode_id="e",
            case=aura,
            diagnosis=Diagnose(name="migraine"),
            exams=[],
            cost=0,
            turns=1,
            format_errors=0,
        )
    )
    assert v.diagnosis_score == 0.25


def test_normalise_diagnosis_keeps_qualifiers() -> None:
    assert normalise_diagnosis("The Acute Pancreatitis!") == "acute pancreatitis"
    assert normalise_diagnosis("chronic pancreatitis") != normalise_diagnosis("acute pancreatitis")
    assert normalise_diagnosis("Kidney stones") == normalise_diagnosis("kidney stone")
    assert normalise_diagnosis("iron-deficiency anaemia") == normalise_diagnosis(
        "iron deficiency anemia"
    )


def test_judge_exam_scores() -> None:
    case = case_of("community-acquired pneumonia")  # key: CXR, WBC, CRP, sputum culture
    v = score(case, "pneumonia", ["chest X-ray", "white blood cell count"])
    assert (v.exam_precision, v.exam_recall) == (1.0, 0.5)
    assert v.exam_f1 == pytest.approx(2 / 3)
    dup = score(case, "pneumonia", ["chest X-ray", "chest X-ray", "chest X-ray"])
    assert (dup.exam_precision, dup.exam_recall) == (1.0, 0.25)
    panel = score(case, "pneumonia", ["complete blood count"])  # covers the WBC
    assert (panel.exam_precision, panel.exam_recall) == (1.0, 0.25)
    noise = score(case, "pneumonia", ["MRI brain", "lipase"])
    assert noise.exam_precision == noise.exam_recall == noise.exam_f1 == 0.0
    none = score(case, "pneumonia", [])
    assert none.exam_precision == 0.0 and none.exam_f1 == 0.0
    assert exam_scores([], []) == (1.0, 1.0, 1.0)
    assert exam_scores(["chest X-ray"], [])[0] == 0.0


_NAMES = [e.name for e in default_catalogue().entries]


@settings(max_examples=300, deadline=None)
@given(
    ordered=st.lists(st.sampled_from(_NAMES + ["", "not an exam"]), max_size=12),
    key=st.lists(st.sampled_from(_NAMES), max_size=6),
)
def test_exam_scores_are_clamped_and_duplicates_do_not_inflate(
    ordered: list[str], key: list[str]
) -> None:
    p, r, f1 = exam_scores(ordered, key)
    for x in (p, r, f1):
        assert 0.0 <= x <= 1.0
    assert f1 <= max(p, r) + 1e-12
    assert exam_scores(ordered + ordered, key + key) == (p, r, f1)
    assert (
        exam_scores(ordered * 3 + [k for k in key], key)[1] >= r
    )  # more exams: recall never drops


def test_judge_reward_components() -> None:
    case = case_of("community-acquired pneumonia")
    v = score(case, "pneumonia", ["chest X-ray"], cost=60.0, turns=5, format_errors=2, leaks=1)
    w = RulesJudgeConfig()
    assert v.components == pytest.approx(
        {
            "diagnosis": w.diagnosis * 1.0,
            "exam_f1": w.exam_f1 * v.exam_f1,
            "cost": w.cost * 60.0,
            "turns": w.turns * 5,
            "format_errors": w.format_error * 2,
            "leaks": w.leak * 1,
        }
    )
    assert v.reward == pytest.approx(sum(v.components.values()))
    assert (v.cost, v.turns, v.format_errors, v.leaks) == (60.0, 5, 2, 1)
    harsh = RulesJudge.from_config({"cost": -0.01, "format_error": -1.0})
    h = harsh.score(
        ScoreRequest(
            episode_id="e",
            case=case,
            diagnosis=Diagnose(name="pneumonia"),
            exams=["chest X-ray"],
            cost=60.0,
            turns=5,
            format_errors=2,
            leaks=1,
        )
    )
    assert h.components["cost"] == pytest.approx(-0.6)
    assert h.components["format_errors"] == pytest.approx(-2.0)


# --- scripted agents ------------------------------------------------------------------------------


def run_episode(agent, case: Case, max_turns: int = 12, budget: float = 0.0) -> Verdict:
    """A tiny in-process episode loop: agent -> patient / examiner -> ... -> judge."""
    d = case.profile.demographics
    intro = Intro(
        age=d.age,
        sex=d.sex,
        chief_complaint=case.profile.chief_complaint,
        max_turns=max_turns,
        budget=budget,
    )
    steps: list[Step] = []
    diagnosis = None
    exams: list[str] = []
    cost = 0.0
    leaks = 0
    for turn in range(max_turns):
        reply: ActReply = agent.act(
            ActRequest(episode_id=f"ep-{case.id}", intro=intro, steps=steps, turn=turn)
        )
        action = reply.action
        assert reply.text == "" and action is not None
        if isinstance(action, Diagnose):
            diagnosis = action
            break
        if isinstance(action, AskPatient):
            answer = ask(case, action.question)
            leaks += answer.leaked
            observation = PatientAnswer(text=answer.text)
        else:
            assert isinstance(action, OrderExam) and action.names
            results = [exam(case, name).result for name in action.names]
            charged = sum(r.cost for r in results)
            cost += charged
            exams.extend(r.name for r in results if r.found)
            observation = ExamResults(results=results, cost=charged)
        steps.append(Step(text="", action=action, observation=observation))
    turns = len(steps) + (diagnosis is not None)
    return JUDGE.score(
        ScoreRequest(
            episode_id=f"ep-{case.id}",
            case=case,
            diagnosis=diagnosis,
            exams=exams,
            cost=cost,
            turns=turns,
            format_errors=0,
            leaks=leaks,
        )
    )


def _summary(verdicts: list[Verdict]) -> dict[str, float]:
    n = len(verdicts)
    return {
        "accuracy": sum(v.correct for v in verdicts) / n,
        "turns": sum(v.turns for v in verdicts) / n,
        "cost": sum(v.cost for v in verdicts) / n,
        "exam_f1": sum(v.exam_f1 for v in verdicts) / n,
        "reward": sum(v.reward for v in verdicts) / n,
    }


def test_heuristic_agent_far_above_random_agent() -> None:
    episodes = CASES[:200]
    heuristic = _summary([run_episode(HeuristicAgent(), c) for c in episodes])
    random_ = _summary([run_episode(RandomAgent(), c) for c in episodes])
    print(f"\nheuristic: {heuristic}\nrandom:    {random_}")
    assert heuristic["accuracy"] >= 0.8
    assert random_["accuracy"] <= 0.2
    assert heuristic["accuracy"] - random_["accuracy"] >= 0.5
    assert heuristic["exam_f1"] > random_["exam_f1"] + 0.3
    assert heuristic["reward"] > random_["reward"] + 0.5
    assert heuristic["turns"] <= 12


def test_demographics_and_complaint_alone_do_not_give_the_diagnosis_away() -> None:
    """The MAP condition given only age, sex and chief complaint (under the clinician's own
    model) is right for well under two thirds of the cases: the bank's presentations overlap."""
    cases = builtin(1000, seed=5)
    hits = 0
    for case in cases:
        d = case.profile.demographics
        top = posterior([], d.age, d.sex, case.profile.chief_complaint)[0][0]
        hits += top == case.diagnosis.name
    assert hits / len(cases) < 0.62


def test_heuristic_agent_respects_turn_cap_and_budget() -> None:
    for case in CASES[200:230]:
        v = run_episode(HeuristicAgent(), case, max_turns=3, budget=100.0)
        assert v.turns <= 3 and v.cost <= 100.0


def test_heuristic_agent_is_stateless_and_deterministic() -> None:
    agent = HeuristicAgent()
    case = CASES[7]
    d = case.profile.demographics
    intro = Intro(age=d.age, sex=d.sex, chief_complaint=case.profile.chief_complaint, max_turns=12)
    first = agent.act(ActRequest(episode_id="a", intro=intro, steps=[]))
    assert HeuristicAgent().act(ActRequest(episode_id="b", intro=intro, steps=[])) == first
    assert isinstance(first.action, AskPatient | OrderExam)


def test_heuristic_posterior_learns_from_answers() -> None:
    case = case_of("migraine with aura")
    d = case.profile.demographics
    cc = "headache"
    q = question_for("visual aura")
    yes = [Step(text="", action=AskPatient(question=q), observation=PatientAnswer(text="Yes."))]
    no = [Step(text="", action=AskPatient(question=q), observation=PatientAnswer(text="No."))]
    p_yes = dict(posterior(yes, d.age, d.sex, cc))
    p_no = dict(posterior(no, d.age, d.sex, cc))
    assert p_yes["migraine with aura"] > p_no["migraine with aura"]
    assert p_no["migraine without aura"] > p_yes["migraine without aura"]
    assert sum(p_yes.values()) == pytest.approx(1.0)


def test_random_agent_is_valid_and_seeded_per_episode() -> None:
    cat = default_catalogue()
    names = {c.name for c in CONDITIONS}
    agent = RandomAgent()
    intro = Intro(age=50, sex="male", chief_complaint="cough", max_turns=12)
    actions = []
    for i in range(100):
        a = agent.act(ActRequest(episode_id=f"ep-{i}", intro=intro, steps=[])).action
        actions.append(a)
        if isinstance(a, AskPatient):
            assert a.question
        elif isinstance(a, OrderExam):
            assert 1 <= len(a.names) <= 3 and all(cat.match(n) for n in a.names)
        else:
            assert isinstance(a, Diagnose) and a.name in names
    again = [
        agent.act(ActRequest(episode_id=f"ep-{i}", intro=intro, steps=[])).action
        for i in range(100)
    ]
    assert actions == again
    assert len({msgspec.json.encode(a) for a in actions}) > 50
    other = RandomAgent(RandomAgentConfig(seed=1))
    assert [
        other.act(ActRequest(episode_id=f"ep-{i}", intro=intro, steps=[])).action
        for i in range(100)
    ] != actions
    # at the last turn it always diagnoses
    last = agent.act(
        ActRequest(
            episode_id="x",
            intro=Intro(age=50, sex="male", chief_complaint="cough", max_turns=1),
            steps=[],
        )
    )
    assert isinstance(last.action, Diagnose)


def test_heuristic_config_validation() -> None:
    assert HeuristicAgent(HeuristicAgentConfig(max_questions=2)).config.max_questions == 2
    assert condition_by_name("influenza").icd10 == "J11.1"
