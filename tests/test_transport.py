"""The trio/ZeroMQ wrapper under heavy full-duplex traffic: both ends send and receive at once,
from many tasks, and nothing hangs (the edge-triggered FD trap of DESIGN.md's wire rules).
Messages are (header, body) frame pairs, which the wrapper may merge into one ZeroMQ message."""

from __future__ import annotations

import trio
import zmq

from engine.transport import TrioSocket, make_socket


async def test_full_duplex_flood_does_not_hang() -> None:
    ctx = zmq.Context()
    n_tasks, per_task = 20, 2_500
    total = n_tasks * per_task
    a_sock = make_socket(ctx, zmq.DEALER, identity=b"a", hwm=1000)
    b_sock = make_socket(ctx, zmq.ROUTER, hwm=1000)
    b_sock.bind("tcp://127.0.0.1:*")
    a_sock.connect(b_sock.getsockopt_string(zmq.LAST_ENDPOINT))
    got_a: list[int] = []
    got_b: list[int] = []
    done_a, done_b = trio.Event(), trio.Event()
    payload = b"x" * 1024

    def on_a(frames: list[bytes]) -> None:
        assert len(frames) % 2 == 0
        got_a.extend([1] * (len(frames) // 2))
        if len(got_a) == total:
            done_a.set()

    b: TrioSocket

    def on_b(frames: list[bytes]) -> None:
        peer, pairs = frames[0], frames[1:]
        assert len(pairs) % 2 == 0
        for _ in range(len(pairs) // 2):
            got_b.append(1)
            # Answer every message while our own senders are flooding the same socket.
            b.send([peer, b"echo", b""])
        if len(got_b) == total:
            done_b.set()

    a = TrioSocket(a_sock, on_a, name="a")
    b = TrioSocket(b_sock, on_b, name="b")

    async def flood(sock: TrioSocket, count: int, target: bytes | None) -> None:
        for i in range(count):
            sock.send([b"h", payload] if target is None else [target, b"h", payload])
            if i % 100 == 0:
                await trio.lowlevel.checkpoint()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            for _ in range(n_tasks):
                nursery.start_soon(flood, a, per_task, None)
            await done_b.wait()
            await done_a.wait()
            nursery.cancel_scope.cancel()
    assert len(got_a) == total and len(got_b) == total
    assert a_sock.closed and b_sock.closed
    ctx.term()


async def test_send_after_close_is_an_error() -> None:
    ctx = zmq.Context()
    sock = TrioSocket(make_socket(ctx, zmq.DEALER), lambda f: None, name="x")
    async with trio.open_nursery() as nursery:
        await nursery.start(sock.run)
        nursery.cancel_scope.cancel()
    try:
        sock.send([b"late"])
    except Exception as exc:  # noqa: BLE001
        assert "closed" in str(exc)
    else:
        raise AssertionError("send on a closed socket must fail")
    ctx.term()
