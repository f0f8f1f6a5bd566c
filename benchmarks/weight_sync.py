"""Weight sync: a learner's weight server feeding agent workers, against raw ZeroMQ bandwidth.

The state is a 100M-parameter fp32 model (~400 MB: an embedding and six transformer blocks of
realistic shapes, built as bytes; no torch). One `WeightServer` process publishes it; agent
processes each run `WeightClient.fetch` (4 MB chunks, 2 in flight, every tensor's sha256
verified) and the aggregate bandwidth is bytes delivered / wall time from the first start to the
last verified finish (clocks: `time.monotonic`, shared by processes on Linux).

The baseline is the same traffic in raw pyzmq: one ROUTER process answering requests with 4 MB
frames sliced from one buffer (`copy=False`), the same number of DEALER processes each receiving
the whole state with the same 2 requests in flight, `copy=False`, with no copy into a blob and
no checksum: ZeroMQ over tcp loopback alone. A second raw variant lands every chunk in one
fresh `bytearray` per fetch (`recv_into`, as `WeightClient` does) but hashes nothing: what
returning one contiguous blob costs by itself.

Rows (benchmark `weight_sync`):
- `fetch_4`, `raw_4`, `blob_4`   MB/s, 4 agent processes at once (the target's setting).
- `fetch_1`, `raw_1`, `blob_1`   MB/s, one agent process.
- `ratio_4`, `ratio_1`           fetch / raw: an agent's first version, into fresh memory.
- `reuse_4`, `reuse_ratio_4`     MB/s and ratio to raw of 4 agents each fetching into the blob
                                 of its previous fetch (`fetch(into=)`): no fresh memory. The
                                 `hf` agent fetches every later version so, and the design's
                                 target (>= 0.5 of raw) is judged on `reuse_4` / `raw_4`.
- `fetch_cpu`, `reuse_cpu`, `blob_cpu`, `raw_cpu`  CPU seconds (all threads) per GB an agent
                                 process receives, 4 at once.
- `publish_s`, `publish_rate`    the learner's side, once per version whatever the number of
                                 agents: `pack` (sha256 of every tensor, one copy into the blob),
                                 seconds and MB/s. Not part of the fetch rates.
- `sha256`                       MB/s of hashlib's sha256 on one thread: the verification's cost.

Where the difference goes: a fetch must land the bytes in one contiguous blob (one copy out of
ZeroMQ's buffers, plus first-touch page faults of fresh memory: `blob_*`) and hash all of them
(`sha256`); raw ZeroMQ does neither. With every process sharing two cores, the ratio is bounded
by those CPU costs: per GB, sha256 alone (1 / `sha256` s) costs more CPU than raw ZeroMQ's
client (`raw_cpu`) and server together, and touching a fresh blob's pages about as much again
(`blob_cpu` - `raw_cpu`; `reuse_*` skips that part).

All processes are started with `spawn` once per benchmark subprocess (shared by the rounds) and
always joined, or terminated by pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from functools import partial
from multiprocessing.connection import Connection

from benchmarks.common import Context, Row, log

__all__ = ["Fleet", "bench", "model_shapes", "model_sizes", "model_tensors"]

CLIENTS = 4
WINDOW = 2  # requests in flight, dxsim and raw alike (WeightClient's default)
MB = 1e6


def model_shapes(*, vocab: int, hidden: int, layers: int, mlp: int) -> list[tuple[str, list[int]]]:
    """Parameter shapes of a decoder-only transformer (tied embedding, pre-norm blocks)."""
    shapes: list[tuple[str, list[int]]] = [("embed.weight", [vocab, hidden])]
    for i in range(layers):
        p = f"layers.{i}."
        shapes += [
            (p + "attn_norm.weight", [hidden]),
            (p + "attn.qkv.weight", [3 * hidden, hidden]),
            (p + "attn.out.weight", [hidden, hidden]),
            (p + "mlp_norm.weight", [hidden]),
            (p + "mlp.up.weight", [mlp, hidden]),
            (p + "mlp.down.weight", [hidden, mlp]),
        ]
    shapes.append(("norm.weight", [hidden]))
    return shapes


def model_tensors(**sizes: int) -> list[tuple[str, str, list[int], bytes]]:
    """fp32 tensors of `model_shapes(**sizes)`, filled with a cheap per-tensor pattern."""
    out = []
    for name, shape in model_shapes(**sizes):
        n = 4 * math.prod(shape)
        seed = hashlib.sha256(name.encode()).digest()
        out.append((name, "float32", shape, (seed * (n // len(seed) + 1))[:n]))
    return out


def model_sizes(quick: bool) -> dict[str, int]:
    if quick:
        return dict(vocab=2048, hidden=128, layers=2, mlp=512)  # ~0.66M parameters, 2.6 MB
    return dict(vocab=24576, hidden=1024, layers=6, mlp=4096)  # ~100.7M parameters, 403 MB


def _chunk_bytes(quick: bool) -> int:
    return (256 << 10) if quick else (4 << 20)


# --- child processes -----------------------------------------------------------------------------


def _cpu() -> float:
    """CPU seconds of this process, all threads (ZeroMQ's I/O thread and hashing included)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _dxsim_server_main(conn: Connection, quick: bool) -> None:
    import trio
    import zmq

    from engine.weights import WeightServer, pack

    async def main() -> None:
        server = WeightServer(ctx=zmq.Context())
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            tensors = model_tensors(**model_sizes(quick))
            t0 = time.perf_counter()
            manifest, blob = pack(1, tensors, chunk_bytes=_chunk_bytes(quick))
            publish_s = time.perf_counter() - t0
            server.publish(manifest, blob)
            del blob, tensors
            conn.send((server.endpoint, manifest.total_bytes, publish_s))
            with contextlib.suppress(EOFError):
                await trio.to_thread.run_sync(conn.recv)  # stop, or the parent is gone
            nursery.cancel_scope.cancel()

    trio.run(main)


def _dxsim_client_main(conn: Connection, endpoint: str) -> None:
    import trio
    import zmq

    from engine.weights import WeightClient

    client = WeightClient(endpoint, ctx=zmq.Context(), window=WINDOW, timeout_s=120.0)
    conn.send("ready")
    blob = None
    while (command := conn.recv()) in ("fetch", "reuse"):
        into, blob = (blob if command == "reuse" else None), None
        c0, t0 = _cpu(), time.monotonic()
        manifest, blob = trio.run(partial(client.fetch, 1, into=into))  # verifies every sha256
        t1 = time.monotonic()
        assert manifest.version == 1 and len(blob) == manifest.total_bytes
        assert command == "fetch" or blob is into
        conn.send((t0, t1, len(blob), _cpu() - c0))
        del into


def _raw_server_main(conn: Connection, total: int, chunk: int) -> None:
    import zmq

    blob = b"\x5a" * total
    view = memoryview(blob)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 100)
    try:
        sock.bind("tcp://127.0.0.1:*")
        conn.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        while not conn.poll():
            try:
                ident, request = sock.recv_multipart()
            except zmq.Again:
                continue
            i = int.from_bytes(request, "little")
            sock.send_multipart([ident, request, view[i * chunk : (i + 1) * chunk]], copy=False)
    finally:
        sock.close()
        ctx.term()


def _raw_client_main(conn: Connection, endpoint: str, total: int, chunk: int, land: bool) -> None:
    """Raw DEALER; with `land`, each fetch receives into one fresh `bytearray(total)`."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)
    sock.connect(endpoint)
    count = -(-total // chunk)
    conn.send("ready")
    try:
        while conn.recv() == "fetch":
            c0, t0 = _cpu(), time.monotonic()
            asked = received = got = 0
            while asked < min(WINDOW, count):
                sock.send(asked.to_bytes(4, "little"))
                asked += 1
            if land:
                blob = memoryview(bytearray(total))
            while received < count:
                if land:
                    index = int.from_bytes(sock.recv(), "little")
                    got += sock.recv_into(blob[index * chunk : (index + 1) * chunk])
                else:
                    _, data = sock.recv_multipart(copy=False)
                    got += len(data.buffer)
                received += 1
                if asked < count:
                    sock.send(asked.to_bytes(4, "little"))
                    asked += 1
            t1 = time.monotonic()
            assert got == total
            conn.send((t0, t1, got, _cpu() - c0))
            if land:
                del blob
    finally:
        sock.close()
        ctx.term()


# --- parent side ---------------------------------------------------------------------------------


def _stop(proc: mp.process.BaseProcess, timeout: float = 10.0) -> None:
    proc.join(timeout)
    if proc.is_alive():
        log.warning("weight_sync: child %s did not exit; terminating it", proc.pid)
        proc.terminate()
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout)


class Fleet:
    """A serving process and `CLIENTS` fetching processes, idle between rounds."""

    def __init__(self, clients: list[Connection], total: int, publish_s: float) -> None:
        self.clients = clients
        self.total = total
        self.publish_s = publish_s  # the dxsim server's `pack`; 0 for raw

    def measure(self, n: int, command: str = "fetch") -> tuple[float, float]:
        """Aggregate MB/s of `n` clients fetching the whole state at once, and the clients'
        CPU seconds per GB received. `command` "reuse": each dxsim client receives into the
        blob of its previous fetch (`WeightClient.fetch(into=)`)."""
        for conn in self.clients[:n]:
            conn.send(command)
        results = []
        for conn in self.clients[:n]:
            if not conn.poll(300):
                raise TimeoutError("weight_sync: a client took more than 300 s")
            results.append(conn.recv())
        start = min(r[0] for r in results)
        end = max(r[1] for r in results)
        assert all(r[2] == self.total for r in results)
        received = sum(r[2] for r in results)
        return received / (end - start) / MB, sum(r[3] for r in results) / (received / 1e9)


@contextlib.contextmanager
def _fleet(kind: str, quick: bool) -> Iterator[Fleet]:
    spawn = mp.get_context("spawn")
    procs: list[mp.process.BaseProcess] = []
    conns: list[Connection] = []
    try:
        here, there = spawn.Pipe()
        conns.append(here)
        chunk = _chunk_bytes(quick)
        if kind == "dxsim":
            server = spawn.Process(target=_dxsim_server_main, args=(there, quick), daemon=True)
            server.start()
            procs.append(server)
            if not here.poll(300):
                raise TimeoutError("weight_sync: the weight server did not start")
            endpoint, total, publish_s = here.recv()
            target, extra = _dxsim_client_main, ()
        else:
            total = sum(4 * math.prod(shape) for _, shape in model_shapes(**model_sizes(quick)))
            server = spawn.Process(target=_raw_server_main, args=(there, total, chunk), daemon=True)
            server.start()
            procs.append(server)
            if not here.poll(60):
                raise TimeoutError("weight_sync: the raw server did not start")
            endpoint = here.recv()
            target, extra, publish_s = _raw_client_main, (total, chunk, kind == "blob"), 0.0
        clients = []
        for _ in range(CLIENTS):
            mine, theirs = spawn.Pipe()
            proc = spawn.Process(target=target, args=(theirs, endpoint, *extra), daemon=True)
            proc.start()
            procs.append(proc)
            conns.append(mine)
            clients.append(mine)
        for conn in clients:
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError("weight_sync: a client did not start")
        log.info("weight_sync: %s fleet up, %.0f MB state", kind, total / MB)
        yield Fleet(clients, total, publish_s)
    finally:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for proc in procs:
            _stop(proc)
        for conn in conns:
            conn.close()


def bench(ctx: Context) -> list[Row]:
    name = "weight_sync"
    # One fleet at a time: the raw one is measured and torn down before the dxsim one (memory).
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}
    publish_s = 0.0
    for kind in ("raw", "blob", "dxsim"):
        with _fleet(kind, ctx.quick) as fleet:
            fleet.measure(1)  # warm-up: connections, the server's pages
            for n in (1, CLIENTS):
                rates[f"{kind}_{n}"], cpu[f"{kind}_{n}"] = fleet.measure(n)
            if kind == "dxsim":
                rates["reuse"], cpu["reuse"] = fleet.measure(CLIENTS, "reuse")
            total = fleet.total
            publish_s = max(publish_s, fleet.publish_s)
        log.info(
            "weight_sync %s: 1 client %.0f MB/s, %d clients %.0f MB/s",
            kind,
            rates[f"{kind}_1"],
            CLIENTS,
            rates[f"{kind}_{CLIENTS}"],
        )
    state = f"{total / MB:.0f} MB fp32 state, {_chunk_bytes(ctx.quick) >> 10} KiB chunks"
    rows = []
    for n in (CLIENTS, 1):
        who = f"{n} agent process{'es' if n > 1 else ''}"
        rows += [
            Row(name, f"fetch_{n}", rates[f"dxsim_{n}"], "MB/s", f"{who}, verified; {state}"),
            Row(name, f"raw_{n}", rates[f"raw_{n}"], "MB/s", f"{who}, raw pyzmq copy=False"),
            Row(
                name,
                f"blob_{n}",
                rates[f"blob_{n}"],
                "MB/s",
                f"{who}, raw pyzmq into a fresh bytearray, no hash",
            ),
            Row(
                name,
                f"ratio_{n}",
                rates[f"dxsim_{n}"] / rates[f"raw_{n}"],
                "x",
                "fetch / raw" + (" (target >= 0.5)" if n == CLIENTS else ""),
            ),
        ]
    rows += [
        Row(name, "fetch_cpu", cpu[f"dxsim_{CLIENTS}"], "s/GB", "agent process CPU, all threads"),
        Row(
            name,
            "reuse_4",
            rates["reuse"],
            "MB/s",
            f"{CLIENTS} agent processes, verified, each into its previous blob (fetch(into=))",
        ),
        Row(name, "reuse_ratio_4", rates["reuse"] / rates[f"raw_{CLIENTS}"], "x", "reuse / raw"),
        Row(name, "reuse_cpu", cpu["reuse"], "s/GB", "agent process CPU, fetch(into=)"),
        Row(name, "blob_cpu", cpu[f"blob_{CLIENTS}"], "s/GB", "raw client into a blob, CPU"),
        Row(name, "raw_cpu", cpu[f"raw_{CLIENTS}"], "s/GB", "raw client process CPU"),
        Row(name, "publish_s", publish_s, "s", f"learner's pack of the {state}, once per version"),
        Row(name, "publish_rate", total / publish_s / MB, "MB/s", "pack: sha256 + one copy"),
        Row(name, "sha256", _sha256_rate(ctx), "MB/s", "hashlib, one thread: verification cost"),
    ]
    return rows


def _sha256_rate(ctx: Context) -> float:
    data = bytes(ctx.scale(256 << 20, 16 << 20))
    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    return len(data) / (time.perf_counter() - t0) / MB


if __name__ == "__main__":  # python -m benchmarks.weight_sync [--quick]: one round, no runner
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    with Context(quick="--quick" in sys.argv) as c:
        for r in bench(c):
            log.info("%-12s %-10s %10.2f %-5s %s", r.benchmark, r.metric, r.value, r.unit, r.note)
