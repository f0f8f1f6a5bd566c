"""The rules of one episode as a state machine with no I/O: replies in, the next call out.

`Episode.start()` returns the first `Call`; feed each call's replies to `advance()` (or the reason
it could not be made to `fail()`) until a `Finish` comes back. Every path ends in exactly one
`Finish` carrying a `Trajectory` whose terminal state is diagnosed, truncated or aborted, so the
runner (engine.scheduler) cannot lose an episode or publish one twice. Property tests drive this
class directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from protocols import (
    Action,
    ActReply,
    ActRequest,
    AskPatient,
    Case,
    Diagnose,
    ExamQuery,
    ExamReply,
    ExamResult,
    ExamResults,
    FormatFeedback,
    Intro,
    Observation,
    OrderExam,
    PatientAnswer,
    PatientQuestion,
    PatientReply,
    RuleNotice,
    ScoreRequest,
    Step,
    Terminal,
    Trajectory,
    Turn,
    Verdict,
)
from protocols.dialects import get_dialect


class Rules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the scheduler enforces in every episode."""

    max_turns: int = 12  # agent turns, format errors included
    budget: float = 0.0  # total exam cost allowed; 0 = unlimited
    dialect: str = "native"
    request_timeout_s: float = 10.0
    attempts: int = 3  # per call, before the episode is aborted
    max_exams_per_order: int = 8
    reveal_diagnosis: bool = False  # may the Examiner's world model see the diagnosis


@dataclass(frozen=True, slots=True)
class Call:
    service: str  # agent | patient | examiner | judge
    requests: list[Any]  # answered in order by `advance(replies)`


@dataclass(frozen=True, slots=True)
class Finish:
    trajectory: Trajectory


class EpisodeError(Exception):
    """A reply of the wrong type or shape; the runner turns it into `fail()`."""


class Episode:
    def __init__(
        self,
        episode_id: str,
        case: Case,
        rules: Rules,
        *,
        group_id: str = "",
        sample: int = 0,
        group_size: int = 1,
        now: float = 0.0,
    ) -> None:
        self.id = episode_id
        self.case = case
        self.rules = rules
        self.dialect = get_dialect(rules.dialect)
        self.group_id = group_id or episode_id
        self.sample = sample
        self.group_size = group_size
        self.started = now
        demo = case.profile.demographics
        self.intro = Intro(
            age=demo.age,
            sex=demo.sex,
            chief_complaint=case.profile.chief_complaint,
            budget=rules.budget,
            max_turns=rules.max_turns,
        )
        self.steps: list[Step] = []
        self.turns: list[Turn] = []
        self.asked: list[str] = []
        self.results: dict[str, ExamResult] = {}  # by requested name, lower-case
        self.ordered: list[str] = []  # canonical names, in order, with repeats removed
        self.cost = 0.0
        self.format_errors = 0
        self.leaks = 0
        self.diagnosis: Diagnose | None = None
        self.state = "new"
        self._reply: ActReply | None = None  # the agent output of the turn in progress
        self._text = ""
        self._action: Action | None = None
        self._pending_exams: list[str] = []
        self._repeat: dict[str, ExamResult] = {}
        self._terminal: tuple[Terminal, str] | None = None

    # --- public -----------------------------------------------------------------------------

    def start(self) -> Call:
        if self.state != "new":
            raise EpisodeError("episode already started")
        return self._ask_agent()

    def advance(self, replies: list[Any], now: float = 0.0) -> Call | Finish:
        state = self.state
        if state == "agent":
            return self._on_agent(_one(replies, ActReply))
        if state == "patient":
            reply = _one(replies, PatientReply)
            self.leaks += int(reply.leaked)
            return self._end_turn(PatientAnswer(reply.text))
        if state == "examiner":
            return self._on_exams(replies)
        if state == "judge":
            verdict = _one(replies, Verdict)
            terminal, reason = self._terminal or (Terminal.ABORTED, "judged without a terminal")
            return self._finish(terminal, reason, verdict, now)
        raise EpisodeError(f"advance() in state {state!r}")

    def fail(self, reason: str, now: float = 0.0) -> Finish:
        """The call in progress cannot be made: the episode ends aborted, with its partial turn."""
        if self.state == "done":
            raise EpisodeError("episode already finished")
        if self.state in ("patient", "examiner") and self._reply is not None:
            self._record_turn(None)
        return self._finish(Terminal.ABORTED, f"{self.state}: {reason}", None, now)

    @property
    def done(self) -> bool:
        return self.state == "done"

    # --- turn logic -------------------------------------------------------------------------

    def _ask_agent(self) -> Call:
        self.state = "agent"
        request = ActRequest(
            episode_id=self.id,
            intro=self.intro,
            steps=list(self.steps),
            dialect=self.rules.dialect,
            turn=len(self.turns),
        )
        return Call("agent", [request])

    def _on_agent(self, reply: ActReply) -> Call | Finish:
        self._reply = reply
        action: Action | FormatFeedback
        if reply.action is not None:
            action = reply.action
            text = reply.text or self.dialect.render_action(action)
        else:
            action = self.dialect.parse(reply.text)
            text = reply.text
        self._text = text
        if isinstance(action, FormatFeedback):
            self._action = None
            self.format_errors += 1
            return self._end_turn(action)
        self._action = action
        if isinstance(action, Diagnose):
            self.diagnosis = action
            self._record_turn(None)
            return self._judge(Terminal.DIAGNOSED, "diagnosed")
        if isinstance(action, AskPatient):
            self.state = "patient"
            question = PatientQuestion(self.id, self.case, action.question, list(self.asked))
            self.asked.append(action.question)
            return Call("patient", [question])
        return self._order(action)

    def _order(self, action: OrderExam) -> Call | Finish:
        names: list[str] = []
        seen: set[str] = set()
        for name in action.names:
            key = name.strip().lower()
            if key and key not in seen:
                seen.add(key)
                names.append(name.strip())
        if not names:
            self.format_errors += 1
            return self._end_turn(FormatFeedback("an exam order must name at least one exam"))
        if len(names) > self.rules.max_exams_per_order:
            limit = self.rules.max_exams_per_order
            return self._end_turn(RuleNotice(f"at most {limit} exams per order; none ordered"))
        self._repeat = {}
        fresh: list[str] = []
        for name in names:
            earlier = self.results.get(name.lower())
            if earlier is not None:
                self._repeat[name.lower()] = msgspec.structs.replace(earlier, cost=0.0)
            else:
                fresh.append(name)
        self._pending_exams = names
        if not fresh:
            return self._on_exams([])
        self.state = "examiner"
        earlier = list(self.results.values())
        queries = [
            ExamQuery(self.id, self.case, name, earlier, self.rules.reveal_diagnosis)
            for name in fresh
        ]
        return Call("examiner", queries)

    def _on_exams(self, replies: list[Any]) -> Call | Finish:
        fresh = [n for n in self._pending_exams if n.lower() not in self._repeat]
        if len(replies) != len(fresh):
            raise EpisodeError(f"expected {len(fresh)} exam replies, got {len(replies)}")
        by_name = dict(self._repeat)
        for name, reply in zip(fresh, replies, strict=True):
            if not isinstance(reply, ExamReply):
                raise EpisodeError(f"examiner replied {type(reply).__name__}, expected ExamReply")
            by_name[name.lower()] = reply.result
        results = [by_name[n.lower()] for n in self._pending_exams]
        charge = sum(r.cost for r in results)
        for name, result in zip(self._pending_exams, results, strict=True):
            if name.lower() not in self.results:
                self.results[name.lower()] = result
                if result.found and result.name and result.name not in self.ordered:
                    self.ordered.append(result.name)
        self.cost += charge
        finish = self._end_turn(ExamResults(results, charge))
        if (
            isinstance(finish, Call)
            and finish.service == "agent"
            and self.rules.budget > 0
            and self.cost > self.rules.budget
        ):
            return self._judge(Terminal.TRUNCATED, "budget")
        return finish

    def _end_turn(self, observation: Observation) -> Call | Finish:
        self._record_turn(observation)
        if len(self.turns) >= self.rules.max_turns:
            return self._judge(Terminal.TRUNCATED, "turn cap")
        return self._ask_agent()

    def _record_turn(self, observation: Observation | None) -> None:
        reply = self._reply
        assert reply is not None
        self.turns.append(
            Turn(
                index=len(self.turns),
                text=self._text,
                action=self._action,
                observation=observation,
                prompt_ids=reply.prompt_ids,
                token_ids=reply.token_ids,
                logprobs=reply.logprobs,
                policy_version=reply.policy_version,
            )
        )
        if observation is not None:
            self.steps.append(Step(self._text, self._action, observation))
        self._reply = None

    def _judge(self, terminal: Terminal, reason: str) -> Call:
        self._terminal = (terminal, reason)
        self.state = "judge"
        request = ScoreRequest(
            episode_id=self.id,
            case=self.case,
            diagnosis=self.diagnosis,
            exams=list(self.ordered),
            cost=self.cost,
            turns=len(self.turns),
            format_errors=self.format_errors,
            leaks=self.leaks,
        )
        return Call("judge", [request])

    def _finish(
        self, terminal: Terminal, reason: str, verdict: Verdict | None, now: float
    ) -> Finish:
        self.state = "done"
        trajectory = Trajectory(
            id=f"{self.id}/t",
            episode_id=self.id,
            case_id=self.case.id,
            group_id=self.group_id,
            sample=self.sample,
            group_size=self.group_size,
            specialty=self.case.specialty,
            turns=self.turns,
            terminal=terminal,
            reason=reason,
            verdict=verdict,
            cost=self.cost,
            started=self.started,
            finished=now,
        )
        return Finish(trajectory)


def _one(replies: list[Any], kind: type) -> Any:
    if len(replies) != 1 or not isinstance(replies[0], kind):
        got = ", ".join(type(r).__name__ for r in replies) or "nothing"
        raise EpisodeError(f"expected one {kind.__name__}, got {got}")
    return replies[0]
