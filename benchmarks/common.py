"""What every benchmark shares: result rows, the per-benchmark context, timing helpers.

A benchmark is a plain function `bench(ctx: Context) -> list[Row]` doing one measurement round.
The runner calls it `ctx.rounds` times (3) in one subprocess and reports the median of each
(benchmark, metric). Expensive set-up that should live across rounds (a Ray session, worker
processes, a hub) goes through `ctx.resource(key, factory)`: `factory()` returns a context
manager, entered on first use and exited when the benchmark's subprocess finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import msgspec

__all__ = [
    "Context",
    "LatencyStats",
    "Row",
    "Throughput",
    "closed_loop_asyncio",
    "closed_loop_trio",
    "episode_window",
    "latency_stats",
    "pipelined_count",
    "roundtrip_count",
    "timed_rate",
]

log = logging.getLogger("benchmarks")

T = TypeVar("T")


class Row(msgspec.Struct, frozen=True):
    """One measured value. `benchmark` is the registry name; (`benchmark`, `metric`) is the key."""

    benchmark: str
    metric: str
    value: float
    unit: str
    note: str = ""


class Context:
    """What the runner hands a benchmark function on each round."""

    def __init__(self, *, quick: bool = False, rounds: int = 3) -> None:
        self.quick = quick
        self.rounds = rounds
        self.round = 0
        self._stack = contextlib.ExitStack()
        self._resources: dict[str, Any] = {}

    def scale(self, full: T, quick: T) -> T:
        """`full` normally, `quick` under `--quick` (smoke runs)."""
        return quick if self.quick else full

    def resource(self, key: str, factory: Callable[[], AbstractContextManager[T]]) -> T:
        """A context manager entered once per benchmark subprocess and shared by all rounds."""
        if key not in self._resources:
            self._resources[key] = self._stack.enter_context(factory())
        return self._resources[key]

    def close(self) -> None:
        self._resources.clear()
        self._stack.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- shared settings: every variant of a measurement uses the same ones -------------------------


def episode_window(ctx: Context, concurrency: int) -> tuple[float, float]:
    """(warmup_s, measure_s) of an episodes/s measurement at this concurrency."""
    if concurrency == 1:
        return ctx.scale(1.0, 0.1), ctx.scale(4.0, 0.5)
    # Warm-up also waits for the first cohort of `concurrency` episodes (see `_Window`).
    return ctx.scale(2.0, 0.0), ctx.scale(8.0, 0.5)


def roundtrip_count(ctx: Context) -> int:
    """Serial round trips per measurement (after 200 warm-up ones)."""
    return ctx.scale(30_000, 2_000)


def pipelined_count(ctx: Context) -> int:
    """Messages per pipelined measurement."""
    return ctx.scale(300_000, 20_000)


# --- statistics ----------------------------------------------------------------------------------


class LatencyStats(msgspec.Struct, frozen=True):
    count: int
    seconds: float  # wall time of the whole run
    rate: float  # operations per second
    p50_us: float
    p99_us: float
    mean_us: float


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(samples_ns: Sequence[int], seconds: float) -> LatencyStats:
    """p50 / p99 / mean (microseconds) and rate from per-operation durations in nanoseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    return LatencyStats(
        count=n,
        seconds=seconds,
        rate=n / seconds if seconds > 0 else math.nan,
        p50_us=_percentile(ordered, 50) / 1e3,
        p99_us=_percentile(ordered, 99) / 1e3,
        mean_us=(sum(ordered) / n / 1e3) if n else math.nan,
    )


class Throughput(msgspec.Struct, frozen=True):
    completed: int  # operations finished inside the measurement window
    seconds: float  # length of the window
    rate: float  # completed / seconds
    started: int = 0  # operations started in total (warm-up and drain included)


def timed_rate(op: Callable[[], object], seconds: float, batch: int = 1) -> Throughput:
    """Call `op` (which does `batch` operations) back to back for about `seconds`."""
    done = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    now = t0
    while now < deadline:
        op()
        done += batch
        now = time.perf_counter()
    elapsed = now - t0
    return Throughput(done, elapsed, done / elapsed, done)


# --- closed-loop drivers: keep `concurrency` operations in flight, measure the steady state ------
#
# With N operations in flight that all start together, completions can come in bursts of N (every
# operation waits its turn in the same FIFO queues, so the cohort moves in lock-step: Ray does
# this). A fixed time window would then count 0 or N completions depending on where it falls. So
# the window is aligned on completion counts that are multiples of N: it opens at the k0-th
# completion (the first multiple of N reached after `warmup_s`, so the first cohort is excluded),
# stays open for at least `measure_s`, and closes at the k1-th completion, the first multiple of N
# at or after the count reached when `measure_s` ran out. Rate = (k1 - k0) / (t[k1] - t[k0]).
# Operations keep starting until k1 have started; the rest drain uncounted. Same definition under
# asyncio (Ray driver) and trio (dxsim).


class _Window:
    def __init__(self, concurrency: int, warmup_s: float, measure_s: float) -> None:
        self.n = concurrency
        self.measure_s = measure_s
        self.earliest = time.perf_counter() + warmup_s
        self.k0 = 0
        self.start: float | None = None
        self.k1: int | None = None  # the window's last completion, set when measure_s runs out
        self.finished: list[float] = []

    def finish(self) -> None:
        t = time.perf_counter()
        self.finished.append(t)
        k = len(self.finished)
        if self.start is None and t >= self.earliest and k % self.n == 0:
            self.k0, self.start = k, t

    def open(self, started: int) -> bool:
        """True while new operations should start (`started`: how many have so far)."""
        if self.start is None:
            return True
        if self.k1 is None:
            if time.perf_counter() < self.start + self.measure_s:
                return True
            self.k1 = max(self.k0 + self.n, -(-len(self.finished) // self.n) * self.n)
        return started < self.k1

    def result(self, started: int) -> Throughput:
        assert self.start is not None and self.k1 is not None and self.k1 <= len(self.finished)
        completed = self.k1 - self.k0
        seconds = self.finished[self.k1 - 1] - self.finished[self.k0 - 1]
        return Throughput(completed, seconds, completed / seconds, started)


async def closed_loop_asyncio(
    play: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    warmup_s: float,
    measure_s: float,
) -> Throughput:
    sem = asyncio.Semaphore(concurrency)
    window = _Window(concurrency, warmup_s, measure_s)
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await play(i)
            window.finish()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the drain
            failures.append(exc)
        finally:
            sem.release()

    i = 0
    while window.open(i) and not failures:
        await sem.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    if failures:
        raise failures[0]
    return window.result(i)


async def closed_loop_trio(
    play: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    warmup_s: float,
    measure_s: float,
) -> Throughput:
    import trio

    sem = trio.Semaphore(concurrency)
    window = _Window(concurrency, warmup_s, measure_s)

    async def one(i: int) -> None:
        try:
            await play(i)
            window.finish()
        finally:
            sem.release()

    i = 0
    async with trio.open_nursery() as nursery:
        while window.open(i):
            await sem.acquire()
            nursery.start_soon(one, i)
            i += 1
    return window.result(i)


@contextlib.contextmanager
def logged(what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    log.info("%s ...", what)
    yield
    log.info("%s done in %.1f s", what, time.perf_counter() - t0)
