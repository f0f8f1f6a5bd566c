"""New weights reach every worker: the hub broadcasts `WeightsAvailable`, remembers it for workers
that join later, and learns each worker's policy version from its `Ready`."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import zmq

from engine.actor import Actor
from engine.client import connect
from engine.hub import Hub
from engine.routing import Router, RouterConfig
from engine.weights import WeightClient, WeightServer, pack, unpack
from engine.worker import serve
from protocols import (
    Kind,
    PatientAnswer,
    Ready,
    Status,
    StatusQuery,
    WeightsAvailable,
    Welcome,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
)

# --- the router, without sockets ----------------------------------------------------------------


def ready(service: str, name: str, version: int = -1) -> list[bytes]:
    return [encode_envelope(Kind.CONTROL), encode(Ready(service, 2, name, version))]


def bodies(out: list[tuple[bytes, list[bytes]]]) -> list[tuple[bytes, object]]:
    seen = []
    for identity, frames in out:
        assert decode_envelope(frames[0]).kind is Kind.CONTROL
        seen.append((identity, decode(frames[1])))
    return seen


def test_router_broadcasts_remembers_and_reports_versions() -> None:
    router = Router(RouterConfig())
    assert router.broadcast_weights(encode(WeightsAvailable(0, "tcp://l:1"))) == []
    router.on_frames(b"a", ready("agent", "agent-a", 0), 0.0)
    router.on_frames(b"p", ready("patient", "patient-p"), 0.0)

    notice = WeightsAvailable(1, "tcp://learner:5")
    out = bodies(router.broadcast_weights(encode(notice)))
    assert sorted(out, key=lambda x: x[0]) == [(b"a", notice), (b"p", notice)]

    # A worker joining later gets the remembered notice right after its Welcome...
    late = bodies(router.on_frames(b"b", ready("agent", "agent-b", 0), 1.0))
    assert [type(m) for _, m in late] == [Welcome, WeightsAvailable] and late[1][1] == notice
    # ... but only once, not with every heartbeat, and not when it already serves that version.
    assert [type(m) for _, m in bodies(router.on_frames(b"b", ready("agent", "agent-b"), 1.5))] == [
        Welcome
    ]
    current = bodies(router.on_frames(b"c", ready("agent", "agent-c", 1), 1.5))
    assert [type(m) for _, m in current] == [Welcome]

    # Ready carries the version each worker serves; Status reports it.
    router.on_frames(b"a", ready("agent", "agent-a", 1), 2.0)
    versions = {w.worker: w.policy_version for w in router.status(2.0).workers}
    assert versions == {"agent-a": 1, "patient-p": -1, "agent-b": -1, "agent-c": 1}

    # An older notice is still sent on, but the newest one stays remembered.
    router.broadcast_weights(encode(WeightsAvailable(0, "tcp://old:1")))
    late = bodies(router.on_frames(b"d", ready("agent", "agent-d"), 3.0))
    assert late[-1][1] == notice


def test_router_refuses_a_broadcast_that_is_not_a_notice() -> None:
    router = Router(RouterConfig())
    with pytest.raises(ValueError, match="needs an encoded WeightsAvailable, got PatientAnswer"):
        router.broadcast_weights(encode(PatientAnswer("hi")))
    with pytest.raises(ValueError, match="needs an encoded WeightsAvailable"):
        router.broadcast_weights(b"\xc1")


# --- hub, workers and a weight server in one trio run ------------------------------------------


class TinyPolicy(Actor):
    """Fetches each announced version from the weight server and 'serves' it."""

    service = "agent"

    def __init__(self) -> None:
        super().__init__()
        self.version = -1
        self.notices: list[WeightsAvailable] = []
        self.weights: dict[str, bytes] = {}
        self.gate: trio.Event | None = None  # when set by a test, on_weights waits for it
        self.entered = trio.Event()

    @property
    def policy_version(self) -> int:
        return self.version

    async def on_weights(self, msg: WeightsAvailable) -> None:
        self.notices.append(msg)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        manifest, blob = await WeightClient(msg.endpoint, timeout_s=10).fetch(msg.version)
        self.weights = {k: bytes(v) for k, v in unpack(manifest, blob).items()}
        self.version = manifest.version


def model(version: int) -> tuple[object, bytes]:
    return pack(version, [("w", "int32", [3], bytes([version]) * 12)], chunk_bytes=5)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition that other tasks (or processes) make true; fail after 10 s."""
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.005)


async def hub_versions(ep: str, ctx: zmq.Context) -> dict[str, int]:
    async with connect(ep, ctx=ctx) as client:
        status = await client.request("hub", StatusQuery())
    assert isinstance(status, Status)
    return {w.worker: w.policy_version for w in status.workers}


async def test_workers_apply_announced_weights_and_the_hub_sees_it() -> None:
    ctx = zmq.Context()
    # Heartbeats far apart: the hub can only learn the new version from the Ready a worker
    # sends as soon as its update is done.
    beat = {"heartbeat_s": 600.0}
    async with trio.open_nursery() as nursery:
        hub = Hub(["tcp://127.0.0.1:*"], ctx=ctx, config=RouterConfig(**beat))
        ep = (await nursery.start(hub.run))[0]
        server = WeightServer(ctx=ctx)
        await nursery.start(server.run)
        first = TinyPolicy()
        await nursery.start(lambda **kw: serve(first, ep, name="a1", ctx=ctx, **beat, **kw))
        await until(lambda: len(hub.router.workers) == 1)
        assert await hub_versions(ep, ctx) == {"a1": -1}

        server.publish(*model(1))
        hub.broadcast_weights(WeightsAvailable(1, server.endpoint))
        await until(lambda: first.version == 1)
        assert first.weights == {"w": b"\x01" * 12}
        await until(lambda: hub.router.status(0).workers[0].policy_version == 1)
        assert await hub_versions(ep, ctx) == {"a1": 1}

        # A worker started after the broadcast is told too, and catches up.
        late = TinyPolicy()
        await nursery.start(lambda **kw: serve(late, ep, name="a2", ctx=ctx, **beat, **kw))
        await until(lambda: late.version == 1)
        assert late.notices == [WeightsAvailable(1, server.endpoint)]

        async def both_at(version: int) -> bool:
            return await hub_versions(ep, ctx) == {"a1": version, "a2": version}

        with trio.fail_after(10):
            while not await both_at(1):
                await trio.sleep(0.005)
        nursery.cancel_scope.cancel()


async def test_notices_during_a_fetch_are_coalesced_to_the_newest() -> None:
    ctx = zmq.Context()
    async with trio.open_nursery() as nursery:
        hub = Hub(["tcp://127.0.0.1:*"], ctx=ctx, config=RouterConfig(heartbeat_s=0.2))
        ep = (await nursery.start(hub.run))[0]
        server = WeightServer(ctx=ctx, keep=3)
        await nursery.start(server.run)
        policy = TinyPolicy()
        policy.gate = trio.Event()
        worker = await nursery.start(lambda **kw: serve(policy, ep, name="a1", ctx=ctx, **kw))
        await until(lambda: len(hub.router.workers) == 1)

        for v in (1, 2, 3):
            server.publish(*model(v))
        hub.broadcast_weights(WeightsAvailable(1, server.endpoint))
        await policy.entered.wait()
        hub.broadcast_weights(WeightsAvailable(3, server.endpoint))
        hub.broadcast_weights(WeightsAvailable(2, server.endpoint))
        await until(lambda: worker._weights_next is not None and worker._weights_next.version == 3)
        policy.gate.set()
        await until(lambda: policy.version == 3)
        assert [n.version for n in policy.notices] == [1, 3]  # never two at once, 2 skipped
        assert policy.weights == {"w": b"\x03" * 12}
        await until(lambda: hub.router.status(0).workers[0].policy_version == 3)
        nursery.cancel_scope.cancel()
