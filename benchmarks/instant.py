"""The workload of the engine-overhead benchmark: a 6-turn episode with instant scripted actors.

Defined once here and shared by every variant (Ray baseline, dxsim), so only the transport differs:

- `InstantPatient`, `InstantExaminer`, `InstantJudge`, `InstantAgent`: `engine.actor.Actor`
  subclasses with synchronous `@handles` handlers that do no real work (replies are constants or
  one small Struct built from the request).
- `bench_case()`: a small but realistic `Case` (~0.9 KB as msgpack). As in the real engine, it
  travels inside every Patient / Examiner / Judge request, so an `ExamQuery` is ~1 KB on the wire.
- `run_episode_logic(call)`: one episode played exactly as the dxsim scheduler plays it, over an
  abstract `call(service, request) -> reply` coroutine. The episode makes 12 requests:
  6 agent + 3 patient + 2 examiner + 1 judge, in the order of `EXPECTED_SERVICES`.

`run_episode_logic` is event-loop agnostic (it only awaits `call`), so it runs under asyncio (Ray)
and trio (dxsim) alike. Exams of one `OrderExam` are requested one after another (the bench agent
orders a single exam per turn, so concurrency inside a turn would change nothing).

Messages cross process boundaries as the real objects: the Ray variant passes the msgspec Structs
themselves (they pickle natively; Ray pickles arguments and return values; an informational Ray
variant sends `protocols.codec` bytes instead), dxsim sends them msgpack-encoded by
`protocols.codec`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from engine.actor import Actor, handles
from protocols import (
    ActReply,
    ActRequest,
    AskPatient,
    Case,
    Demographics,
    Diagnose,
    Diagnosis,
    ExamQuery,
    ExamRecord,
    ExamReply,
    ExamResult,
    ExamResults,
    FormatFeedback,
    Intro,
    Observation,
    OrderExam,
    PatientAnswer,
    PatientProfile,
    PatientQuestion,
    PatientReply,
    ScoreRequest,
    Step,
    Symptom,
    Verdict,
)

__all__ = [
    "CALLS_PER_EPISODE",
    "EXPECTED_SERVICES",
    "MAX_TURNS",
    "Call",
    "InstantAgent",
    "InstantExaminer",
    "InstantJudge",
    "InstantPatient",
    "bench_case",
    "instant_actors",
    "local_call",
    "run_episode_logic",
]

Call = Callable[[str, Any], Awaitable[Any]]
"""`call(service, request) -> reply`: the only thing a transport variant has to provide."""

MAX_TURNS = 6
EXPECTED_SERVICES: tuple[str, ...] = (
    "agent",
    "patient",
    "agent",
    "patient",
    "agent",
    "patient",
    "agent",
    "examiner",
    "agent",
    "examiner",
    "agent",
    "judge",
)
CALLS_PER_EPISODE = len(EXPECTED_SERVICES)  # 12

_QUESTIONS = (
    "When did the cough start, and are you bringing anything up?",
    "Have you had any fever or chills?",
    "Do you get short of breath or have chest pain when you breathe in?",
)
_EXAM = "complete blood count"


def bench_case() -> Case:
    """A community-acquired pneumonia case, about 1 KB as msgpack (an `ExamQuery` is ~1.1 KB)."""
    return Case(
        id="bench-0001",
        profile=PatientProfile(
            demographics=Demographics(age=67, sex="male"),
            chief_complaint="cough and fever for four days",
            history_of_present_illness="Productive cough, fever and right pleuritic pain.",
            symptoms=[
                Symptom("cough", detail="rust-coloured sputum"),
                Symptom("fever", detail="39.2 C with chills"),
                Symptom("chest pain", detail="worse on deep breath"),
            ],
            past_history=["type 2 diabetes"],
            medications=["metformin"],
            allergies=["penicillin"],
            social_history=["ex-smoker, 30 pack-years"],
        ),
        exams=[
            ExamRecord("white blood cell count", "lab", "14.2 x10^9/L", 14.2, "x10^9/L"),
            ExamRecord("c-reactive protein", "lab", "186 mg/L", 186.0, "mg/L"),
            ExamRecord("chest x-ray", "imaging", "Right lower lobe consolidation."),
        ],
        key_exams=["chest x-ray", "complete blood count"],
        diagnosis=Diagnosis("community-acquired pneumonia", icd10="J18.9", synonyms=["pneumonia"]),
        specialty="respiratory",
    )


# --- instant actors ------------------------------------------------------------------------------

_PATIENT_REPLY = PatientReply("No.")
_VERDICT = Verdict(
    correct=True,
    diagnosis_score=1.0,
    match="synonym",
    exam_precision=1.0,
    exam_recall=0.3333,
    exam_f1=0.5,
    cost=28.0,
    turns=MAX_TURNS,
    format_errors=0,
    leaks=0,
    reward=1.0,
)
_AGENT_REPLIES: tuple[ActReply, ...] = (
    *(ActReply(text=f"<ask>{q}</ask>", action=AskPatient(q)) for q in _QUESTIONS),
    *(ActReply(text=f"<exam>{_EXAM}</exam>", action=OrderExam([_EXAM])) for _ in range(2)),
    ActReply(text="<diagnose>pneumonia</diagnose>", action=Diagnose("pneumonia")),
)


class InstantPatient(Actor):
    service = "patient"

    @handles(PatientQuestion)
    def answer(self, request: PatientQuestion) -> PatientReply:
        return _PATIENT_REPLY


class InstantExaminer(Actor):
    service = "examiner"

    @handles(ExamQuery)
    def result(self, request: ExamQuery) -> ExamReply:
        return ExamReply(
            ExamResult(
                requested=request.exam,
                name=_EXAM,
                result="WBC 14.2 x10^9/L (high), Hb 138 g/L, platelets 310 x10^9/L",
                value=14.2,
                unit="x10^9/L",
                source="record",
                cost=14.0,
            )
        )


class InstantJudge(Actor):
    service = "judge"

    @handles(ScoreRequest)
    def score(self, request: ScoreRequest) -> Verdict:
        return _VERDICT


class InstantAgent(Actor):
    """Turns 0-2 ask the patient, 3-4 order a complete blood count, 5 (and later) diagnose."""

    service = "agent"

    @handles(ActRequest)
    def act(self, request: ActRequest) -> ActReply:
        return _AGENT_REPLIES[min(request.turn, len(_AGENT_REPLIES) - 1)]


def instant_actors() -> dict[str, Actor]:
    """One instance of each instant actor, by service name."""
    return {
        cls.service: cls() for cls in (InstantAgent, InstantPatient, InstantExaminer, InstantJudge)
    }


def local_call(actors: dict[str, Actor] | None = None) -> Call:
    """An in-process `call` that dispatches straight to the handlers (no transport at all)."""
    tables = {service: actor.handlers() for service, actor in (actors or instant_actors()).items()}

    async def call(service: str, request: Any) -> Any:
        return tables[service][type(request)](request)

    return call


# --- the episode ---------------------------------------------------------------------------------


def _expect(reply: Any, kind: type, service: str) -> Any:
    if not isinstance(reply, kind):
        raise TypeError(f"{service} answered {type(reply).__name__}, expected {kind.__name__}")
    return reply


async def run_episode_logic(
    call: Call,
    case: Case | None = None,
    episode_id: str = "bench-episode",
    max_turns: int = MAX_TURNS,
) -> Verdict:
    """Play one episode over `call`, as the scheduler does, and return the judge's Verdict."""
    case = case if case is not None else _BENCH_CASE
    demo = case.profile.demographics
    intro = Intro(demo.age, demo.sex, case.profile.chief_complaint, max_turns=max_turns)
    steps: list[Step] = []
    asked: list[str] = []
    earlier: list[ExamResult] = []
    exams: list[str] = []
    cost = 0.0
    format_errors = 0
    diagnosis: Diagnose | None = None
    turns = 0
    while turns < max_turns:
        reply: ActReply = _expect(
            await call("agent", ActRequest(episode_id, intro, steps[:], turn=turns)),
            ActReply,
            "agent",
        )
        turns += 1
        action = reply.action
        observation: Observation
        if isinstance(action, Diagnose):
            diagnosis = action
            break
        if isinstance(action, AskPatient):
            answer: PatientReply = _expect(
                await call("patient", PatientQuestion(episode_id, case, action.question, asked[:])),
                PatientReply,
                "patient",
            )
            asked.append(action.question)
            observation = PatientAnswer(answer.text)
        elif isinstance(action, OrderExam):
            results: list[ExamResult] = []
            for name in action.names:
                exam: ExamReply = _expect(
                    await call("examiner", ExamQuery(episode_id, case, name, earlier[:])),
                    ExamReply,
                    "examiner",
                )
                results.append(exam.result)
                earlier.append(exam.result)
                exams.append(exam.result.name or exam.result.requested)
            order_cost = sum(r.cost for r in results)
            cost += order_cost
            observation = ExamResults(results, cost=order_cost)
        else:
            format_errors += 1
            observation = FormatFeedback("no action could be parsed")
        steps.append(Step(reply.text, action, observation))
    return _expect(
        await call(
            "judge",
            ScoreRequest(episode_id, case, diagnosis, exams, cost, turns, format_errors),
        ),
        Verdict,
        "judge",
    )


_BENCH_CASE = bench_case()
