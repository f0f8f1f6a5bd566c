"""Every episode ends in exactly one terminal state and is published exactly once, whatever the
actors reply, fail or delay: the episode state machine under hypothesis, then the scheduler on a
mock clock with an adversarial transport."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.client import RemoteError, RequestTimeout
from engine.episode import Call, Episode, EpisodeError, Finish, Rules
from engine.scheduler import Scheduler
from protocols import (
    ActReply,
    AskPatient,
    Diagnose,
    ErrorCode,
    ExamReply,
    ExamResult,
    OrderExam,
    PatientReply,
    Publish,
    Published,
    Terminal,
)
from tests.fakes import answer, tiny_case, verdict

actions = st.one_of(
    st.builds(AskPatient, st.text(max_size=20)),
    st.builds(
        OrderExam, st.lists(st.sampled_from(["cbc", "chest x-ray", "", " CBC "]), max_size=4)
    ),
    st.builds(Diagnose, st.sampled_from(["pneumonia", "asthma"])),
)
agent_replies = st.one_of(
    st.builds(ActReply, text=st.just(""), action=actions),
    st.builds(ActReply, text=st.text(max_size=60)),  # raw text, often unparseable
    st.builds(ActReply, text=st.sampled_from(["<ask>why?</ask>", "<diagnosis>asthma</diagnosis>"])),
)


def valid_reply(service: str, request: Any, data: st.DataObject) -> Any:
    if service == "agent":
        return data.draw(agent_replies)
    if service == "patient":
        return PatientReply(data.draw(st.text(max_size=20)), leaked=data.draw(st.booleans()))
    if service == "examiner":
        cost = data.draw(st.floats(0, 500))
        return ExamReply(ExamResult(request.exam, request.exam.strip().lower(), "ok", cost=cost))
    return verdict(data.draw(st.booleans()))


class EpisodeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.rules_ = Rules(max_turns=6, budget=600.0)
        self.episode = Episode("ep-1", tiny_case(), self.rules_)
        self.call: Call | None = self.episode.start()
        self.finishes: list[Finish] = []

    def _take(self, result: Call | Finish) -> None:
        if isinstance(result, Finish):
            self.finishes.append(result)
            self.call = None
        else:
            self.call = result

    @precondition(lambda self: self.call is not None)
    @rule(data=st.data())
    def actors_answer(self, data: st.DataObject) -> None:
        assert self.call is not None
        replies = [valid_reply(self.call.service, r, data) for r in self.call.requests]
        self._take(self.episode.advance(replies))

    @precondition(lambda self: self.call is not None)
    @rule(data=st.data())
    def actor_answers_nonsense(self, data: st.DataObject) -> None:
        assert self.call is not None
        wrong = data.draw(
            st.sampled_from([[], [PatientReply("x"), PatientReply("y")], [verdict()]])
        )
        try:
            self._take(self.episode.advance(wrong))
        except EpisodeError as exc:  # the runner turns this into fail()
            self._take(self.episode.fail(str(exc)))

    @precondition(lambda self: self.call is not None)
    @rule(reason=st.sampled_from(["timeout", "worker died", "no worker"]))
    def call_fails(self, reason: str) -> None:
        self._take(self.episode.fail(reason))

    @precondition(lambda self: self.call is None)
    @rule()
    def finished_episode_refuses_more(self) -> None:
        for poke in (lambda: self.episode.fail("again"), lambda: self.episode.advance([])):
            try:
                poke()
            except EpisodeError:
                continue
            raise AssertionError("a finished episode accepted more input")

    @invariant()
    def at_most_one_finish(self) -> None:
        assert len(self.finishes) <= 1
        assert (self.call is None) == (len(self.finishes) == 1) == self.episode.done

    @invariant()
    def finish_is_well_formed(self) -> None:
        if not self.finishes:
            assert len(self.episode.turns) <= self.rules_.max_turns
            return
        t = self.finishes[0].trajectory
        assert t.terminal in (Terminal.DIAGNOSED, Terminal.TRUNCATED, Terminal.ABORTED)
        assert len(t.turns) <= self.rules_.max_turns
        if t.terminal is Terminal.ABORTED:
            assert t.verdict is None and t.reason
        else:
            assert t.verdict is not None
        if t.terminal is Terminal.DIAGNOSED:
            assert isinstance(t.turns[-1].action, Diagnose)
        if t.reason == "budget":
            assert t.cost > self.rules_.budget


EpisodeMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestEpisodeMachine = EpisodeMachine.TestCase


# --- the scheduler on a mock clock, with a transport that fails, delays and lies ----------------


class ChaosTransport:
    """Answers correctly, late, wrongly or not at all, by a drawn script; counts publishes."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.i = 0
        self.published: dict[str, int] = {}

    def _next(self) -> str:
        mode = self.script[self.i % len(self.script)]
        self.i += 1
        return mode

    async def request(self, service: str, body: Any, *, timeout: float = 10.0) -> Any:
        mode = self._next()
        if isinstance(body, Publish):
            if mode == "fail":
                raise RemoteError(ErrorCode.NO_WORKER, "broker restarting")
            tid = body.trajectory.id
            self.published[tid] = self.published.get(tid, 0) + 1
            return Published(tid, duplicate=self.published[tid] > 1)
        if mode == "fail":
            raise RemoteError(ErrorCode.WORKER_FAILED, "boom")
        if mode == "timeout":
            await trio.sleep(timeout)
            raise RequestTimeout("late")
        if mode == "slow":
            await trio.sleep(timeout / 2)
        if mode == "wrong":
            return PatientReply("I am not what you asked for")
        if mode == "final":
            raise RemoteError(ErrorCode.BAD_REQUEST, "not handled")
        return answer(service, body)


@settings(max_examples=60, deadline=None)
@given(
    script=st.lists(
        st.sampled_from(["ok", "ok", "ok", "fail", "timeout", "slow", "wrong", "final"]),
        min_size=1,
        max_size=12,
    ),
    episodes=st.integers(1, 12),
    concurrency=st.integers(1, 5),
    group_size=st.integers(1, 3),
)
def test_scheduler_publishes_every_episode_once(
    script: list[str], episodes: int, concurrency: int, group_size: int
) -> None:
    transport = ChaosTransport(script)
    rules = Rules(max_turns=5, request_timeout_s=2.0, attempts=2)
    cases = [tiny_case(i) for i in range(3)]
    finished: list[Any] = []

    async def main() -> None:
        scheduler = Scheduler(
            transport, cases, rules, concurrency=concurrency, group_size=group_size
        )
        await scheduler.run(episodes, finished.append)
        tally = scheduler.tally
        assert tally.finished == episodes and tally.running == 0
        assert tally.published + tally.publish_failed == episodes

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(finished) == episodes
    ids = [t.id for t in finished]
    assert len(set(ids)) == episodes
    assert all(n == 1 for n in transport.published.values())
    assert set(transport.published) <= set(ids)
    for t in finished:
        assert t.terminal in (Terminal.DIAGNOSED, Terminal.TRUNCATED, Terminal.ABORTED)


def test_clean_run_is_all_diagnosed() -> None:
    transport = ChaosTransport(["ok"])
    finished: list[Any] = []

    async def main() -> None:
        s = Scheduler(transport, [tiny_case()], Rules(), concurrency=4, group_size=2)
        await s.run(8, finished.append)
        assert s.tally.summary()["accuracy"] == 1.0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [t.terminal for t in finished] == [Terminal.DIAGNOSED] * 8
    assert [len(t.turns) for t in finished] == [3] * 8
    groups: dict[str, list[int]] = {}
    for t in finished:
        groups.setdefault(t.group_id, []).append(t.sample)
    assert all(sorted(v) == [0, 1] for v in groups.values()) and len(groups) == 4
