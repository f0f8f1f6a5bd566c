"""The floor: raw pyzmq between two processes plus msgspec, no trio, no engine.

The message is the ~1.1 KB `ExamQuery` carrying `bench_case()`, encoded with a plain msgspec
msgpack `Encoder` and decoded with a `Decoder(ExamQuery)` (one frame, no envelope).

Rows (benchmark `raw_zmq`):
- `rt_serial`         round trips/s: DEALER (this process) -> ROUTER (echo process), blocking
                      sockets over tcp loopback, one request in flight. Per round trip: the client
                      encodes, the echo process decodes and re-encodes the decoded message, the
                      client decodes the reply (1.1 KB each way).
- `rt_p50`, `rt_p99`  microseconds per round trip, over the same run.
- `pushpull_msgspec`  msgs/s, PUSH (this process, encodes each message) -> PULL (sink process,
                      decodes each), pipelined with the default high-water mark.
- `pushpull_bytes`    msgs/s, the same with pre-encoded bytes and no decoding: ZeroMQ alone.
- `msgspec_codec`     encode+decode pairs/s in one process (typed decoder).
- `protocols_codec`   encode+decode pairs/s through `protocols.codec` (the union decoder dxsim
                      uses on the wire; no envelope frame).
- `flat_codec`        encode+decode pairs/s of a flat 1 KB Struct (`Chunk` with 1,000 bytes): the
                      codec's ceiling, for comparison with the nested, string-heavy `ExamQuery`.

The other processes are started with the `spawn` method and always joined, or killed by pid.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from benchmarks.common import (
    Context,
    LatencyStats,
    Row,
    Throughput,
    latency_stats,
    log,
    pipelined_count,
    roundtrip_count,
)
from benchmarks.instant import bench_case

__all__ = [
    "EchoServer",
    "bench",
    "codec_rate",
    "echo_server",
    "pushpull",
    "roundtrip",
    "sample_message",
]

_RCV_TIMEOUT_MS = 10_000
_STOP = b"\x00stop"


def sample_message() -> Any:
    from protocols import ExamQuery

    return ExamQuery("bench-episode-0000", bench_case(), "complete blood count")


def _socket(ctx: Any, kind: int) -> Any:
    import zmq

    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, _RCV_TIMEOUT_MS)
    sock.setsockopt(zmq.SNDTIMEO, _RCV_TIMEOUT_MS)
    return sock


# --- child processes -----------------------------------------------------------------------------


def _echo_main(endpoint: str, ready: Connection) -> None:
    """ROUTER: decode each request, re-encode the decoded message, send it back."""
    import zmq

    from protocols import ExamQuery

    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(ExamQuery)
    ctx = zmq.Context()
    sock = _socket(ctx, zmq.ROUTER)
    sock.setsockopt(zmq.RCVTIMEO, -1)  # idle between rounds; the parent stops us with _STOP
    try:
        sock.connect(endpoint)
        ready.send(True)
        while True:
            ident, payload = sock.recv_multipart(copy=False)
            if payload.bytes == _STOP:
                break
            sock.send_multipart([ident, enc.encode(dec.decode(payload.buffer))], copy=False)
    finally:
        sock.close()
        ctx.term()


def _sink_main(endpoint: str, back: str, decode: bool, count: int) -> None:
    """PULL `count` messages (decoding each if asked), then report on `back`."""
    import zmq

    from protocols import ExamQuery

    dec = msgspec.msgpack.Decoder(ExamQuery)
    ctx = zmq.Context()
    pull = _socket(ctx, zmq.PULL)
    push = _socket(ctx, zmq.PUSH)
    try:
        pull.connect(endpoint)
        push.connect(back)
        push.send(b"ready")
        for _ in range(count):
            frame = pull.recv(copy=False)
            if decode:
                dec.decode(frame.buffer)
        push.send(b"done")
    finally:
        pull.close()
        push.close()
        ctx.term()


def _stop_process(proc: mp.process.BaseProcess, timeout: float = 5.0) -> None:
    proc.join(timeout)
    if proc.is_alive():
        log.warning("raw_zmq: child %s did not exit; terminating it", proc.pid)
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout)


# --- round trips ---------------------------------------------------------------------------------


class EchoServer:
    """The client side of a running echo process: `roundtrip(count)` measures."""

    def __init__(self, zctx: Any, sock: Any) -> None:
        self._zctx = zctx
        self.sock = sock
        self.message = sample_message()
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(type(self.message))

    def roundtrip(self, count: int, warmup: int = 200) -> LatencyStats:
        sock, enc, dec, msg = self.sock, self._enc, self._dec, self.message
        clock = time.perf_counter_ns
        for _ in range(warmup):
            sock.send(enc.encode(msg), copy=False)
            dec.decode(sock.recv(copy=False).buffer)
        samples = [0] * count
        t0 = clock()
        for i in range(count):
            t = clock()
            sock.send(enc.encode(msg), copy=False)
            reply = dec.decode(sock.recv(copy=False).buffer)
            samples[i] = clock() - t
        elapsed = (clock() - t0) / 1e9
        if reply != msg:
            raise AssertionError("echo returned a different message")
        return latency_stats(samples, elapsed)


@contextlib.contextmanager
def echo_server() -> Iterator[EchoServer]:
    """An echo process connected to a DEALER bound here on tcp loopback."""
    import zmq

    zctx = zmq.Context()
    sock = _socket(zctx, zmq.DEALER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    spawn = mp.get_context("spawn")
    ready_r, ready_w = spawn.Pipe(duplex=False)
    proc = spawn.Process(
        target=_echo_main, args=(f"tcp://127.0.0.1:{port}", ready_w), name="raw-zmq-echo"
    )
    proc.start()
    try:
        if not ready_r.poll(30):
            raise RuntimeError("echo process did not start")
        ready_r.recv()
        yield EchoServer(zctx, sock)
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.send(_STOP, zmq.NOBLOCK)
        _stop_process(proc)
        sock.close()
        zctx.term()


def roundtrip(count: int, warmup: int = 200) -> LatencyStats:
    """Serial round trips to a fresh echo process (started and stopped here)."""
    with echo_server() as server:
        return server.roundtrip(count, warmup)


# --- pipelined -----------------------------------------------------------------------------------


def pushpull(count: int, *, encode: bool = True, warmup: int = 2_000) -> Throughput:
    """PUSH `count` messages to a sink process; rate from the first send to the sink's report."""
    import zmq

    msg = sample_message()
    enc = msgspec.msgpack.Encoder()
    payload = enc.encode(msg)
    zctx = zmq.Context()
    push = _socket(zctx, zmq.PUSH)
    back = _socket(zctx, zmq.PULL)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    back_port = back.bind_to_random_port("tcp://127.0.0.1")
    proc = mp.get_context("spawn").Process(
        target=_sink_main,
        args=(
            f"tcp://127.0.0.1:{port}",
            f"tcp://127.0.0.1:{back_port}",
            encode,
            warmup + count,
        ),
        name="raw-zmq-sink",
    )
    proc.start()
    try:
        if back.recv() != b"ready":
            raise RuntimeError("sink did not start")
        for _ in range(warmup):
            push.send(payload)
        t0 = time.perf_counter()
        if encode:
            for _ in range(count):
                push.send(enc.encode(msg), copy=False)
        else:
            for _ in range(count):
                push.send(payload, copy=False)
        if back.recv() != b"done":
            raise RuntimeError("sink did not finish")
        elapsed = time.perf_counter() - t0
    finally:
        _stop_process(proc)
        push.close()
        back.close()
        zctx.term()
    return Throughput(count, elapsed, count / elapsed, count)


# --- in-process codec ----------------------------------------------------------------------------


def codec_rate(count: int, *, via_protocols: bool = False, flat: bool = False) -> Throughput:
    """Encode+decode pairs per second of the sample message (or a flat 1 KB one), in process."""
    from protocols import Chunk

    msg = Chunk(1, 0, bytes(1000)) if flat else sample_message()
    if via_protocols:
        from protocols import decode, encode
    else:
        encode = msgspec.msgpack.Encoder().encode
        decode = msgspec.msgpack.Decoder(type(msg)).decode
    for _ in range(min(count, 1_000)):
        decode(encode(msg))
    t0 = time.perf_counter()
    for _ in range(count):
        decode(encode(msg))
    elapsed = time.perf_counter() - t0
    return Throughput(count, elapsed, count / elapsed, count)


# --- the benchmark -------------------------------------------------------------------------------


def bench(ctx: Context) -> list[Row]:
    name = "raw_zmq"
    size = len(msgspec.msgpack.encode(sample_message()))
    server = ctx.resource("echo", echo_server)
    rt = server.roundtrip(roundtrip_count(ctx))
    log.info(
        "raw zmq rt: %.0f/s p50 %.1f us p99 %.1f us (%d B)", rt.rate, rt.p50_us, rt.p99_us, size
    )
    note = f"{size} B each way, tcp loopback"
    rows = [
        Row(name, "rt_serial", rt.rate, "rt/s", note),
        Row(name, "rt_p50", rt.p50_us, "us", note),
        Row(name, "rt_p99", rt.p99_us, "us", note),
    ]
    pp = pushpull(pipelined_count(ctx), encode=True)
    rows.append(Row(name, "pushpull_msgspec", pp.rate, "msgs/s", "encode + decode per message"))
    raw = pushpull(ctx.scale(1_000_000, 50_000), encode=False)
    rows.append(Row(name, "pushpull_bytes", raw.rate, "msgs/s", "pre-encoded, no decode"))
    log.info("raw zmq push/pull: msgspec %.0f/s, bytes %.0f/s", pp.rate, raw.rate)
    typed = codec_rate(ctx.scale(500_000, 20_000))
    rows.append(Row(name, "msgspec_codec", typed.rate, "enc+dec/s", "typed Decoder, in-process"))
    union = codec_rate(ctx.scale(500_000, 20_000), via_protocols=True)
    rows.append(Row(name, "protocols_codec", union.rate, "enc+dec/s", "protocols.codec union"))
    flat = codec_rate(ctx.scale(1_000_000, 20_000), flat=True)
    rows.append(Row(name, "flat_codec", flat.rate, "enc+dec/s", "flat 1 KB Chunk, in-process"))
    log.info(
        "codec: msgspec %.0f/s, protocols.codec %.0f/s, flat %.0f/s",
        typed.rate,
        union.rate,
        flat.rate,
    )
    return rows


if __name__ == "__main__":  # python -m benchmarks.raw_zmq [--quick]: one round, no runner
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    with Context(quick="--quick" in sys.argv) as c:
        for r in bench(c):
            log.info("%-10s %-18s %12.1f %s", r.benchmark, r.metric, r.value, r.unit)
