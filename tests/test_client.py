"""Hub, workers and clients over real sockets in one trio run: replies, timeouts, errors,
version mismatch at handshake, a dead hub, CURVE, and the blocking client."""

from __future__ import annotations

import msgspec
import pytest
import trio
import zmq

from engine.actor import Actor, ActorError, handles
from engine.client import HubUnreachable, RemoteError, RequestTimeout, SyncHubClient, connect
from engine.hub import Hub
from engine.routing import RouterConfig
from engine.security import CurveKeys, SecurityError, check_bind, write_keys
from engine.worker import serve
from protocols import (
    PROTOCOL_VERSION,
    Error,
    ErrorCode,
    ExamQuery,
    Hello,
    PatientQuestion,
    PatientReply,
    Status,
    StatusQuery,
    decode,
    encode,
)
from tests.fakes import tiny_case


class Echo(Actor):
    service = "patient"

    @handles(PatientQuestion)
    def answer(self, q: PatientQuestion) -> PatientReply:
        if q.question == "refuse":
            raise ActorError(ErrorCode.BAD_REQUEST, "I will not answer that")
        if q.question == "crash":
            raise RuntimeError("handler bug")
        return PatientReply(q.question.upper())


class Stuck(Actor):
    service = "examiner"

    @handles(ExamQuery)
    async def never(self, q: ExamQuery) -> PatientReply:
        await trio.sleep_forever()
        raise AssertionError


def question(text: str) -> PatientQuestion:
    return PatientQuestion("ep", tiny_case(), text)


async def start_hub(nursery: trio.Nursery, **kwargs: object) -> tuple[Hub, str]:
    hub = Hub(["tcp://127.0.0.1:*"], ctx=zmq.Context(), **kwargs)  # type: ignore[arg-type]
    endpoints = await nursery.start(hub.run)
    return hub, endpoints[0]


async def test_requests_replies_and_errors() -> None:
    async with trio.open_nursery() as nursery:
        hub, ep = await start_hub(nursery)
        await nursery.start(lambda **kw: serve(Echo(), ep, ctx=hub.ctx, **kw))
        await nursery.start(lambda **kw: serve(Stuck(), ep, ctx=hub.ctx, **kw))
        async with connect(ep, ctx=hub.ctx) as client:
            assert await client.request("patient", question("hello")) == PatientReply("HELLO")
            replies = []

            async def one(i: int) -> None:
                replies.append(await client.request("patient", question(f"q{i}")))

            async with trio.open_nursery() as many:
                for i in range(300):
                    many.start_soon(one, i)
            assert sorted(r.text for r in replies) == sorted(f"Q{i}" for i in range(300))

            with pytest.raises(RemoteError) as refused:
                await client.request("patient", question("refuse"))
            assert refused.value.code is ErrorCode.BAD_REQUEST
            with pytest.raises(RemoteError) as crashed:
                await client.request("patient", question("crash"))
            assert crashed.value.code is ErrorCode.WORKER_FAILED
            assert "handler bug" in crashed.value.message
            with pytest.raises(RemoteError) as wrong:
                await client.request("patient", StatusQuery())
            assert wrong.value.code is ErrorCode.BAD_REQUEST
            with pytest.raises(RequestTimeout):
                await client.request("examiner", ExamQuery("ep", tiny_case(), "cbc"), timeout=0.3)
            status = await client.request("hub", StatusQuery())
            assert isinstance(status, Status)
            assert {w.service for w in status.workers} == {"patient", "examiner"}
            # Still healthy after all that.
            assert await client.request("patient", question("ok")) == PatientReply("OK")
        nursery.cancel_scope.cancel()


async def test_unknown_service_fails_after_queue_timeout() -> None:
    async with trio.open_nursery() as nursery:
        hub, ep = await start_hub(nursery, config=RouterConfig(queue_timeout_s=0.3))
        async with connect(ep, ctx=hub.ctx) as client:
            with pytest.raises(RemoteError) as exc:
                await client.request("nobody", question("x"), timeout=5)
            assert exc.value.code is ErrorCode.NO_WORKER and "nobody" in exc.value.message
        nursery.cancel_scope.cancel()


async def test_version_mismatch_is_refused_at_handshake() -> None:
    async with trio.open_nursery() as nursery:
        hub, ep = await start_hub(nursery)
        sock = hub.ctx.socket(zmq.DEALER)
        sock.connect(ep)
        future = msgspec.msgpack.encode([PROTOCOL_VERSION + 1, 3, 1, ""])
        sock.send_multipart([future, encode(Hello("from the future"))])
        assert await trio.to_thread.run_sync(sock.poll, 5000), "no answer from the hub"
        frames = sock.recv_multipart()
        err = decode(frames[1])
        assert isinstance(err, Error) and err.code is ErrorCode.VERSION_MISMATCH
        assert f"v{PROTOCOL_VERSION + 1}" in err.message and f"v{PROTOCOL_VERSION}" in err.message
        sock.close(0)
        nursery.cancel_scope.cancel()


async def test_dead_hub_is_an_error_within_the_heartbeat_window() -> None:
    async with trio.open_nursery() as outer:
        hub_scope = trio.CancelScope()
        ctx = zmq.Context()
        hub = Hub(["tcp://127.0.0.1:*"], ctx=ctx, config=RouterConfig(heartbeat_s=0.1))

        async def run_hub(task_status: trio.TaskStatus[list[str]]) -> None:
            with hub_scope:
                await hub.run(task_status=task_status)

        ep = (await outer.start(run_hub))[0]
        await outer.start(lambda **kw: serve(Stuck(), ep, ctx=ctx, heartbeat_s=0.1, **kw))
        async with connect(ep, ctx=ctx, heartbeat_s=0.1) as client:
            hub_scope.cancel()  # the hub dies with a request in flight
            with trio.fail_after(5), pytest.raises(HubUnreachable):
                await client.request("examiner", ExamQuery("ep", tiny_case(), "cbc"), timeout=60)
        outer.cancel_scope.cancel()


def test_sync_client_and_bind_rules(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(SecurityError, match="CURVE"):
        check_bind("tcp://0.0.0.0:5555", None)
    check_bind("tcp://127.0.0.1:5555", None)
    check_bind("tcp://0.0.0.0:5555", CurveKeys(str(tmp_path)))
    with pytest.raises(SecurityError, match="CURVE"):
        Hub(["tcp://*:0"])
    with pytest.raises(HubUnreachable):
        SyncHubClient("tcp://127.0.0.1:9", handshake_timeout=0.3)


async def test_curve_round_trip(tmp_path) -> None:  # noqa: ANN001
    keys = CurveKeys(str(write_keys(tmp_path / "keys")))
    with pytest.raises(SecurityError, match="exists"):
        write_keys(tmp_path / "keys")
    async with trio.open_nursery() as nursery:
        hub, ep = await start_hub(nursery, curve=keys)
        await nursery.start(lambda **kw: serve(Echo(), ep, ctx=hub.ctx, curve=keys, **kw))
        async with connect(ep, ctx=hub.ctx, curve=keys) as client:
            assert await client.request("patient", question("secret")) == PatientReply("SECRET")
        # Without keys the handshake never completes.
        with pytest.raises(HubUnreachable):
            async with connect(ep, ctx=hub.ctx, handshake_timeout=0.5):
                pass
        nursery.cancel_scope.cancel()
