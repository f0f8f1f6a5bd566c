"""dxsim's half of the round-trip benchmark: one request through the hub to a worker process and
back, as the scheduler makes it (client in the hub's process, worker over tcp loopback), with the
same 1,106-byte `ExamQuery` as `raw_zmq`. The worker decodes it and sends the decoded message back
re-encoded, as the raw echo does. Rows: `rt_serial` (rt/s), `rt_p50`, `rt_p99` (us), `pipelined`
(requests/s with 256 in flight)."""

from __future__ import annotations

import time

import trio

from benchmarks.common import Context, Row, latency_stats, log, pipelined_count, roundtrip_count
from benchmarks.dxsim_cluster import instant_cluster
from benchmarks.raw_zmq import sample_message
from engine.actor import Actor, handles
from protocols import ExamQuery

__all__ = ["Echo", "bench"]


class Echo(Actor):
    service = "examiner"

    @handles(ExamQuery)
    def echo(self, request: ExamQuery) -> ExamQuery:
        return request


async def _measure(ctx: Context) -> list[Row]:
    msg = sample_message()
    async with instant_cluster({"echo-0": ["benchmarks.dxsim_roundtrip:Echo"]}) as (_, client):
        for _ in range(200):
            await client.request("examiner", msg)
        count = roundtrip_count(ctx)
        samples: list[int] = []
        t0 = time.perf_counter()
        for _ in range(count):
            s = time.perf_counter_ns()
            await client.request("examiner", msg)
            samples.append(time.perf_counter_ns() - s)
        stats = latency_stats(samples, time.perf_counter() - t0)

        total = pipelined_count(ctx) // 4
        per_task = total // 256

        async def stream() -> None:
            for _ in range(per_task):
                await client.request("examiner", msg)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(256):
                nursery.start_soon(stream)
        rate = per_task * 256 / (time.perf_counter() - t0)
    return [
        Row("dxsim_roundtrip", "rt_serial", stats.rate, "rt/s", "1 in flight, via the hub"),
        Row("dxsim_roundtrip", "rt_p50", stats.p50_us, "us"),
        Row("dxsim_roundtrip", "rt_p99", stats.p99_us, "us"),
        Row("dxsim_roundtrip", "pipelined", rate, "requests/s", "256 in flight, round trips"),
    ]


def bench(ctx: Context) -> list[Row]:
    rows = trio.run(_measure, ctx)
    for row in rows:
        log.info("%s %s: %.1f %s", row.benchmark, row.metric, row.value, row.unit)
    return rows
