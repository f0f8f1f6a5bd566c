"""Staleness admission: `accepted + running <= (max_staleness + version + 1) * batch` at every step,
tight (a waiter is blocked only when the bound is reached), woken without polling, stoppable; and
the scheduler wired to it on a mock clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.admission import Admission, AdmissionClosed
from engine.episode import Rules
from engine.scheduler import Scheduler
from protocols import Publish, Published
from tests.fakes import answer, tiny_case


def mock_run(main: Any) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class HoldTransport:
    """Answers everything correctly after a mock second; the broker accepts or refuses all."""

    def __init__(self, publish_ok: bool = True) -> None:
        self.publish_ok = publish_ok
        self.published: list[str] = []

    async def request(self, service: str, body: Any, *, timeout: float = 10.0) -> Any:
        await trio.sleep(1.0)  # every call takes a mock second
        if isinstance(body, Publish):
            self.published.append(body.trajectory.id)
            if not self.publish_ok:
                return "refused"  # not a `Published`: the trajectory was not accepted
            return Published(body.trajectory.id)
        return answer(service, body)


def test_the_rule_itself() -> None:
    a = Admission(batch=4, max_staleness=1)
    assert a.capacity == 8 and a.free == 8
    for _ in range(8):
        assert a.try_admit()
    assert not a.try_admit() and a.free == 0  # 0 + 8 running: one more would make 9 > 8
    a.finished(accepted=True)
    assert (a.accepted, a.running) == (1, 7) and not a.try_admit()
    a.finished(accepted=False)  # a rejected trajectory frees its slot
    assert a.try_admit() and not a.try_admit()
    a.set_version(1)
    assert a.capacity == 12 and a.free == 4
    a.set_version(0)  # late news of an older version changes nothing
    assert a.version == 1
    with pytest.raises(ValueError):
        Admission(batch=0)
    with pytest.raises(ValueError):
        Admission(batch=1, max_staleness=-1)
    with pytest.raises(RuntimeError):
        Admission(batch=1).finished(accepted=True)


def test_rebase_after_a_learner_lost_steps_keeps_the_rollouts_going() -> None:
    """A learner announced version 12, died, and restarts from its checkpoint at version 10: the
    20 trajectories its two lost steps consumed are gone. Counting versions alone would leave the
    rule short of them forever; rebasing on what the broker holds restores the free capacity."""
    a = Admission(batch=10, max_staleness=1)
    a.set_version(12)
    a.add_accepted(135)  # 120 consumed by the learner's 12 steps, 15 still in the broker
    assert a.free == 5
    a.resume_at(10)  # versions only go forward: the restart is invisible
    assert a.free == 5 and a.version == 12
    a.rebase(10, held=15)  # what the head does when a new learner announces its first version
    assert (a.version, a.accepted, a.free) == (10, 115, 5)
    a.set_version(11)
    assert a.free == 15
    with pytest.raises(ValueError):
        a.rebase(-1, 0)


def test_rebase_frees_the_slots_of_groups_a_learner_filtered_out() -> None:
    """A learner with dynamic sampling consumed 30 trajectories for its first step (20 of them in
    groups without signal, acked untrained). Counting versions alone would hold those 20 against
    the rule; the head's rebase on the broker frees them."""
    a = Admission(batch=10, max_staleness=1)
    a.add_accepted(35)  # all admitted episodes ended: 35 accepted
    assert a.free == 0
    a.set_version(1)  # versions alone: 30 of capacity, 35 accepted -> nothing may start
    assert a.free == 0
    a.rebase(1, held=5)  # 30 left the broker, 5 still held
    assert (a.accepted, a.free) == (15, 15)


def test_admit_blocks_until_set_version_without_polling() -> None:
    async def main() -> None:
        a = Admission(batch=2, max_staleness=0)
        order: list[str] = []

        async def starter() -> None:
            for i in range(5):
                await a.admit()
                order.append(f"start{i}")
                a.finished(accepted=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(starter)
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["start0", "start1"] and a.waiting == 1
            t0 = trio.current_time()
            await trio.sleep(3600)  # nothing polls: an hour passes, still blocked
            assert order == ["start0", "start1"] and trio.current_time() - t0 == 3600
            a.set_version(1)
            await trio.testing.wait_all_tasks_blocked()
            assert len(order) == 4 and (a.accepted, a.running) == (4, 0)
            a.set_version(2)
        assert len(order) == 5

    mock_run(main)


def test_stop_releases_waiters_cleanly() -> None:
    async def main() -> None:
        a = Admission(batch=1)
        assert a.try_admit()
        outcomes: list[str] = []

        async def waiter() -> None:
            try:
                await a.admit()
                outcomes.append("admitted")
            except AdmissionClosed:
                outcomes.append("closed")

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert a.waiting == 3
            a.stop()
        assert outcomes == ["closed"] * 3 and a.waiting == 0 and a.running == 1
        with pytest.raises(AdmissionClosed):
            await a.admit()
        assert not a.try_admit()

    mock_run(main)


def test_cancelled_wait_reserves_nothing() -> None:
    async def main() -> None:
        a = Admission(batch=1)
        await a.admit()
        with trio.move_on_after(5):
            await a.admit()
        assert a.running == 1 and a.waiting == 0
        a.finished(accepted=False)
        await a.admit()
        assert a.running == 1

    mock_run(main)


@settings(max_examples=150, deadline=None)
@given(
    batch=st.integers(1, 5),
    max_staleness=st.integers(0, 3),
    starters=st.integers(1, 3),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("finish"), st.integers(0, 50), st.booleans()),
            st.tuples(st.just("bump"), st.integers(1, 2), st.just(False)),
        ),
        max_size=60,
    ),
)
def test_bound_holds_and_is_tight_under_any_interleaving(
    batch: int, max_staleness: int, starters: int, ops: list[tuple[str, int, bool]]
) -> None:
    """Starter tasks admit as fast as allowed; hypothesis interleaves completions (accepted or
    rejected, any running episode) and version bumps. After each step: the bound holds, and the
    starters wait only when the bound is reached."""

    async def main() -> None:
        a = Admission(batch=batch, max_staleness=max_staleness)
        running: list[int] = []
        serial = 0

        async def starter() -> None:
            nonlocal serial
            while True:
                try:
                    await a.admit()
                except AdmissionClosed:
                    return
                serial += 1
                running.append(serial)
                assert a.accepted + a.running <= a.capacity

        def check() -> None:
            assert a.running == len(running)
            assert a.accepted + a.running <= (max_staleness + a.version + 1) * batch
            assert a.waiting == starters  # everyone admitted what they could...
            assert a.accepted + a.running == a.capacity  # ...so the bound is reached exactly

        async with trio.open_nursery() as nursery:
            for _ in range(starters):
                nursery.start_soon(starter)
            await trio.testing.wait_all_tasks_blocked()
            check()
            for kind, n, accepted in ops:
                if kind == "finish" and running:
                    running.pop(n % len(running))
                    a.finished(accepted=accepted)
                elif kind == "bump":
                    a.set_version(a.version + n)
                await trio.testing.wait_all_tasks_blocked()
                check()
            a.stop()

    mock_run(main)


# --- the scheduler wired to admission -------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_synchronous_scheduler_runs_exactly_batch_per_version(batch: int) -> None:
    transport = HoldTransport()

    async def main() -> None:
        a = Admission(batch=batch, max_staleness=0)
        s = Scheduler(
            transport,
            [tiny_case(i) for i in range(3)],
            Rules(),
            concurrency=16,
            group_size=2,
            admit=a.admit,
            release=a.finished,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run, None)
            for version in range(3):
                await trio.sleep(1000)  # far longer than an episode: all admitted ones finish
                assert s.tally.started == (version + 1) * batch
                assert s.tally.finished == (version + 1) * batch and s.tally.running == 0
                assert (a.accepted, a.running, a.waiting) == ((version + 1) * batch, 0, 1)
                a.set_version(version + 1)
            await trio.testing.wait_all_tasks_blocked()
            assert a.running > 0  # the next batch is in flight; stop() lets it finish
            s.stop()
        assert s.tally.started == s.tally.finished == 4 * batch
        assert (a.accepted, a.running) == (4 * batch, 0)

    mock_run(main)


def test_scheduler_rejected_trajectories_free_their_slots() -> None:
    transport = HoldTransport(publish_ok=False)

    async def main() -> None:
        a = Admission(batch=2, max_staleness=0)
        s = Scheduler(transport, [tiny_case()], Rules(), admit=a.admit, release=a.finished)
        with trio.move_on_after(100):
            await s.run(7)
        assert s.tally.finished == 7 and s.tally.publish_failed == 7
        assert (a.accepted, a.rejected, a.running, a.version) == (0, 7, 0, 0)

    mock_run(main)


def test_admission_stop_ends_scheduler_run() -> None:
    transport = HoldTransport()

    async def main() -> None:
        a = Admission(batch=2, max_staleness=1)
        s = Scheduler(transport, [tiny_case()], Rules(), admit=a.admit, release=a.finished)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run, None)
            await trio.sleep(1000)
            assert a.waiting == 1 and s.tally.started == 4
            a.stop()  # run() returns by itself
        assert s.stopping and s.tally.finished == 4 and a.running == 0

    mock_run(main)


def test_scheduler_stop_while_waiting_for_admission() -> None:
    async def main() -> None:
        a = Admission(batch=1)
        s = Scheduler(HoldTransport(), [tiny_case()], Rules(), admit=a.admit, release=a.finished)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run, None)
            await trio.sleep(1000)
            assert a.waiting == 1
            s.stop()  # cancels the pending admit; nothing is reserved
        assert s.tally.started == 1 and (a.accepted, a.running) == (1, 0)

    mock_run(main)


def test_a_resumed_learner_counts_its_trained_batches_as_accepted() -> None:
    a = Admission(batch=4, max_staleness=1)
    a.resume_at(3)  # 3 steps were trained before the restart: 12 trajectories consumed
    assert (a.version, a.accepted, a.free) == (3, 12, 8)  # (1 + 3 + 1) * 4 - 12
    a.resume_at(2)  # older news changes nothing
    assert (a.version, a.accepted) == (3, 12)


def test_the_head_frees_the_slots_of_trajectories_a_learner_filtered() -> None:
    """Mid-step, a learner with dynamic sampling acks groups without signal and tells the head
    (`Filtered`): their slots come free at once, not at the next version, so the rollouts can
    produce the groups with signal the learner still waits for."""
    from types import SimpleNamespace

    from engine.actor import ActorError
    from engine.cluster import HeadControl
    from protocols import Acked, ErrorCode, Filtered

    a = Admission(batch=10, max_staleness=1)
    a.add_accepted(20)
    assert a.free == 0
    control = HeadControl(SimpleNamespace(admission=a))  # type: ignore[arg-type]
    assert control.filtered(Filtered(8)) == Acked(8)
    assert (a.accepted, a.free) == (12, 8)
    with pytest.raises(ActorError) as err:
        control.filtered(Filtered(-1))
    assert err.value.code == ErrorCode.BAD_REQUEST
    with pytest.raises(ValueError):
        a.discard(-1)
