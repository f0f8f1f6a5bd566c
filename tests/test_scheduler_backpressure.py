"""Backpressure: a broker that refuses `Publish` with OVERLOADED (it holds `max_pending`
trajectories) makes the scheduler hold the finished trajectory and offer it again; nothing is
dropped, nothing is published twice, and the trajectories in existence stay bounded by
`max_pending + concurrency` while a slow learner drains the broker.

First a real in-process `Broker` behind a mock-clock transport (hypothesis over concurrency, group
size, broker size and ack pace), then the same over a real hub and broker worker on tcp loopback.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from engine.actor import ActorError
from engine.broker import Broker, BrokerConfig
from engine.client import RemoteError, connect
from engine.episode import Rules
from engine.hub import Hub
from engine.scheduler import Scheduler
from engine.worker import serve
from protocols import Ack, Groups, Publish, Published, Pull, Terminal, Trajectory
from tests.fakes import answer, tiny_case


class BrokerTransport:
    """The scheduler's view of the cluster: episode services answer correctly after a mock tick;
    `Publish` goes to a real in-process `Broker`, whose refusals come back as a worker would send
    them (`RemoteError` with the `ActorError`'s code). `check` runs after every publish attempt."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.attempts: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self.refused = 0
        self.check: Any = lambda: None

    async def request(self, service: str, body: Any, *, timeout: float = 10.0) -> Any:
        await trio.sleep(0.01)
        if not isinstance(body, Publish):
            return answer(service, body)
        tid = body.trajectory.id
        self.attempts[tid] = self.attempts.get(tid, 0) + 1
        try:
            reply = self.broker.publish(body)
        except ActorError as exc:
            self.refused += 1
            raise RemoteError(exc.code, exc.message, service) from None
        finally:
            self.check()
        assert isinstance(reply, Published) and not reply.duplicate
        self.accepted[tid] = self.accepted.get(tid, 0) + 1
        return reply


def in_scheduler(s: Scheduler) -> int:
    """Episodes started whose trajectory the broker has not taken yet (running or held)."""
    return s.tally.started - s.tally.published - s.tally.publish_failed


@settings(max_examples=40, deadline=None)
@given(
    concurrency=st.integers(1, 5),
    group_size=st.integers(1, 3),
    spare=st.integers(0, 3),
    groups=st.integers(2, 6),
    ack_delay=st.sampled_from([0.0, 0.5, 5.0, 60.0]),
)
def test_overloaded_broker_holds_back_the_scheduler(
    concurrency: int, group_size: int, spare: int, groups: int, ack_delay: float
) -> None:
    # The least that always leaves room to complete a group: with fewer, incomplete groups could
    # fill the broker while their missing members wait in the scheduler's slots (the broker's
    # docstring asks for concurrency x group size, which is at least this).
    max_pending = concurrency * (group_size - 1) + 1 + spare
    episodes = groups * group_size
    broker = Broker(BrokerConfig(max_pending=max_pending))
    transport = BrokerTransport(broker)
    acked: list[str] = []
    peak = {"held": 0, "scheduler": 0}

    async def main() -> None:
        s = Scheduler(
            transport,
            [tiny_case(i) for i in range(3)],
            Rules(request_timeout_s=2.0, attempts=2),
            concurrency=concurrency,
            group_size=group_size,
        )

        def check() -> None:
            held = broker.core.pending + in_scheduler(s)
            assert broker.core.pending <= max_pending
            assert in_scheduler(s) <= concurrency
            assert s.tally.holding <= concurrency
            assert held <= max_pending + concurrency
            peak["held"] = max(peak["held"], held)
            peak["scheduler"] = max(peak["scheduler"], s.tally.holding)

        transport.check = check

        async def learner() -> None:
            """Pulls one group at a time and acks it only after `ack_delay` mock seconds."""
            while len(acked) < episodes:
                lease, got = broker.core.pull(1, 3600.0, broker.clock())
                if not got:
                    await trio.sleep(0.1)
                    continue
                await trio.sleep(ack_delay)
                broker.core.ack(lease, broker.clock())
                acked.extend(t.id for g in got for t in g)
                check()

        with trio.fail_after(100_000):  # mock seconds: a deadlock fails instead of hanging
            async with trio.open_nursery() as nursery:
                nursery.start_soon(learner)
                await s.run(episodes)
        assert s.tally.published == episodes and s.tally.publish_failed == 0
        assert s.tally.holding == 0 and s.tally.overload_waits == transport.refused
        assert s.tally.summary()["overload_waits"] == transport.refused
        if ack_delay >= 5.0 and episodes > max_pending:
            assert transport.refused > 0  # the learner is the bottleneck: backpressure happened

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(transport.accepted) == episodes
    assert all(n == 1 for n in transport.accepted.values())
    assert sorted(acked) == sorted(transport.accepted)  # every episode reached the learner once
    assert broker.core.pending == 0 and broker.received == episodes and broker.duplicates == 0
    assert peak["held"] <= max_pending + concurrency


def test_backoff_is_capped_exponential_and_not_an_attempt() -> None:
    """One trajectory refused many times: waits double up to the cap; `attempts` (1) is not
    spent by refusals."""
    broker = Broker(BrokerConfig(max_pending=1))
    transport = BrokerTransport(broker)
    sleeps: list[float] = []

    async def main() -> None:
        s = Scheduler(transport, [tiny_case()], Rules(attempts=1), concurrency=2)
        s.overload_backoff_s, s.overload_backoff_max_s = 0.5, 4.0
        broker.core.publish(_filler())  # the broker is full until the learner acks
        times: list[float] = []
        transport.check = lambda: times.append(trio.current_time())

        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(s.run, 1)
                while transport.refused < 7:
                    await trio.sleep(0.25)
                lease, _ = broker.core.pull(1, 60.0, broker.clock())
                broker.core.ack(lease, broker.clock())
        sleeps.extend(round(b - a - 0.01, 6) for a, b in zip(times, times[1:], strict=False))
        assert s.tally.published == 1 and s.tally.publish_failed == 0
        assert s.tally.overload_waits == transport.refused >= 7

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sleeps[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_stop_while_held_counts_publish_failed_and_says_why() -> None:
    broker = Broker(BrokerConfig(max_pending=1))
    transport = BrokerTransport(broker)

    async def main() -> None:
        s = Scheduler(transport, [tiny_case()], Rules(), concurrency=3)
        broker.core.publish(_filler())  # full, and no learner ever acks
        with capture_logs() as logs, trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(s.run, None)
                while s.tally.holding < 3:
                    await trio.sleep(0.25)
                assert s.tally.started == 3  # every slot holds a trajectory: nothing new starts
                s.stop()  # wakes the held ones at once; run() returns
        # run() was already waiting for a slot when stop() came, so it may start one more
        started = s.tally.started
        assert started in (3, 4) and s.tally.publish_failed == started and s.tally.published == 0
        assert s.tally.holding == 0
        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == started
        assert all("stopped while the broker was overloaded" in e["event"] for e in errors)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert transport.accepted == {}


def _filler() -> Trajectory:
    return Trajectory(
        id="filler",
        episode_id="filler",
        case_id="c",
        group_id="filler",
        turns=[],
        terminal=Terminal.TRUNCATED,
        reason="turn cap",
    )


# --- over a real hub: the OVERLOADED error crosses the wire as backpressure ----------------------


class HubAndFakes:
    """`broker` requests go through a real hub to a real Broker worker; the rest answer at once."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def request(self, service: str, body: Any, *, timeout: float = 10.0) -> Any:
        if service == "broker":
            return await self.client.request(service, body, timeout=timeout)
        await trio.sleep(0)
        return answer(service, body)


async def test_backpressure_through_a_real_hub_and_broker_worker() -> None:
    episodes, concurrency = 8, 3
    broker = Broker(BrokerConfig(max_pending=2))
    acked: list[str] = []
    async with trio.open_nursery() as nursery:
        hub = Hub(["tcp://127.0.0.1:*"], ctx=zmq.Context())
        (endpoint,) = await nursery.start(hub.run)
        await nursery.start(lambda **kw: serve(broker, endpoint, ctx=hub.ctx, **kw))
        async with connect(endpoint, ctx=hub.ctx) as client:
            s = Scheduler(
                HubAndFakes(client),
                [tiny_case(i) for i in range(3)],
                Rules(request_timeout_s=10.0),
                concurrency=concurrency,
            )

            async def learner() -> None:
                while len(acked) < episodes:
                    # ack nothing until the scheduler is holding a refused trajectory
                    while s.tally.holding == 0 and s.tally.published < episodes:
                        await trio.sleep(0.005)
                    got = await client.request("broker", Pull(max_groups=1), timeout=10.0)
                    assert isinstance(got, Groups)
                    if got.groups:
                        await client.request("broker", Ack(got.lease), timeout=10.0)
                        acked.extend(t.id for g in got.groups for t in g)
                    assert broker.core.pending <= 2
                    assert in_scheduler(s) <= concurrency

            with trio.fail_after(60):
                async with trio.open_nursery() as inner:
                    inner.start_soon(learner)
                    await s.run(episodes)
            assert s.tally.published == episodes and s.tally.publish_failed == 0
            assert s.tally.overload_waits > 0
        nursery.cancel_scope.cancel()
    assert len(acked) == len(set(acked)) == episodes
    assert broker.received == episodes and broker.duplicates == 0
