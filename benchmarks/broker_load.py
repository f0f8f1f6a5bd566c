"""The durable broker under load: throughput, bytes/s and a flat RSS over 100k trajectories.

The design's target (DESIGN.md, "Performance targets"): broker and scheduler RSS flat over 100k
episodes. This drives `engine.broker.BrokerCore` directly (no hub: what is measured is the
broker's own cost, the segment log on disk included) with its segment log in a temporary
directory, and realistic trajectories (`protocols` messages): `TURNS` turns, each with
`PROMPT_TOKENS` prompt token ids, `GEN_TOKENS` generated token ids and as many logprobs (about
13 KB per trajectory as a log record).

- `load`: a producer publishes `count` trajectories in GRPO groups of `GROUP_SIZE`; a consumer
  that keeps up pulls every complete group as soon as there is one and acks it. RSS (psutil) is
  sampled once the broker is open (`rss_open_mb`, before any publish: the acked window is
  allocated there in full, 16 bytes per remembered ack) and then every `count / 10` publishes;
  rows give the first sample, the last, the largest and the growth from first to last, with the
  default `max_seen_ids` (the last 1M acks remembered for duplicate detection: never full in this
  run) and again with `SMALL_WINDOW` (`*_window10k`: full after 10k acks, then every compaction
  writes the whole window to the log), each in a fresh process.
  The log fsyncs every `FSYNC_EVERY` records (rows `*_fsync1` give the rate when every record is
  fsynced, the broker's default, on a shorter run).
- `backpressure`: the consumer takes one group for every two the producer offers, and the broker
  holds at most `BP_MAX_PENDING` trajectories. Refused publishes (`OVERLOADED`) are retried later,
  as the scheduler does; rows give the refusals, the most trajectories ever held and RSS.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec

from benchmarks.common import Context, Row, log
from engine.actor import ActorError
from engine.broker import BrokerCore
from protocols import (
    AskPatient,
    Diagnose,
    ErrorCode,
    PatientAnswer,
    Terminal,
    Trajectory,
    Turn,
    Verdict,
)
from protocols.arrays import pack_floats, pack_ids

__all__ = ["LoadResult", "bench", "make_trajectories", "run_backpressure", "run_load"]

BENCH = "broker_load"
TURNS = 4
PROMPT_TOKENS = 256  # new prompt tokens per turn (the observation and the chat template)
GEN_TOKENS = 192  # generated tokens per turn
GROUP_SIZE = 8
FSYNC_EVERY = 64
BP_MAX_PENDING = 2_000
SMALL_WINDOW = 10_000  # max_seen_ids of the info run that shows where the RSS growth goes


def make_trajectories(seed: int = 0) -> Trajectory:
    """A template trajectory of realistic size; copies differ by id, group and sample."""
    rng = random.Random(seed)
    turns = []
    for i in range(TURNS):
        last = i == TURNS - 1
        action = Diagnose("community-acquired pneumonia") if last else AskPatient(f"Question {i}?")
        text = (
            "<think>"
            + "reasoning " * 40
            + "</think>"
            + ("<diagnosis>community-acquired pneumonia</diagnosis>" if last else "<ask>Q?</ask>")
        )
        turns.append(
            Turn(
                index=i,
                text=text,
                action=action,
                observation=None if last else PatientAnswer("Since Monday, with a dry cough."),
                prompt_ids=pack_ids([rng.randrange(32_000) for _ in range(PROMPT_TOKENS)]),
                token_ids=pack_ids([rng.randrange(32_000) for _ in range(GEN_TOKENS)]),
                logprobs=pack_floats([-3 * rng.random() for _ in range(GEN_TOKENS)]),
                policy_version=3,
                latency_s=0.8,
            )
        )
    verdict = Verdict(
        correct=True,
        diagnosis_score=1.0,
        match="synonym",
        exam_precision=1.0,
        exam_recall=0.5,
        exam_f1=0.667,
        cost=0.0,
        turns=TURNS,
        format_errors=0,
        leaks=0,
        reward=1.0,
    )
    return Trajectory(
        id="template",
        episode_id="template",
        case_id="case-0001",
        group_id="template",
        group_size=GROUP_SIZE,
        specialty="respiratory",
        turns=turns,
        terminal=Terminal.DIAGNOSED,
        reason="diagnosed",
        verdict=verdict,
        started=1.7e9,
        finished=1.7e9 + 4,
    )


def _nth(template: Trajectory, n: int) -> Trajectory:
    group, sample = divmod(n, GROUP_SIZE)
    gid = f"g-{group:08d}"
    return msgspec.structs.replace(
        template, id=f"{gid}.{sample}", episode_id=f"{gid}.{sample}", group_id=gid, sample=sample
    )


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@dataclass
class LoadResult:
    published: int = 0
    acked: int = 0
    refused: int = 0
    seconds: float = 0.0
    record_bytes: int = 0  # one trajectory as a log record (msgpack)
    max_pending: int = 0
    rss_mb: list[float] = field(default_factory=list)  # sampled every `sample_every` publishes
    rss_open_mb: float = 0.0  # once the broker is open, before the first publish

    @property
    def rate(self) -> float:
        return self.published / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.published * self.record_bytes / self.seconds / 1e6


def _consume(core: BrokerCore, out: LoadResult, max_groups: int) -> None:
    now = time.monotonic()
    lease, groups = core.pull(max_groups, 60.0, now)
    if groups:
        if any(len(g) != GROUP_SIZE for g in groups):
            raise RuntimeError("the broker handed out an incomplete group")
        out.acked += core.ack(lease, now)


def run_load(
    count: int,
    *,
    fsync_every: int = FSYNC_EVERY,
    samples: int = 10,
    max_seen_ids: int = 1_000_000,
) -> LoadResult:
    """Publish `count` trajectories while a consumer that keeps up pulls and acks every group."""
    template = make_trajectories()
    out = LoadResult(record_bytes=len(msgspec.msgpack.encode(template)))
    every = max(count // samples, 1)
    with tempfile.TemporaryDirectory(prefix="dxsim-broker-load-") as tmp:
        core = BrokerCore.open(
            os.path.join(tmp, "log"), fsync_every=fsync_every, max_seen_ids=max_seen_ids
        )
        gc.collect()
        out.rss_open_mb = _rss_mb()
        t0 = time.perf_counter()
        try:
            for n in range(count):
                core.publish(_nth(template, n))
                out.published += 1
                if core.ready:
                    _consume(core, out, max_groups=16)
                out.max_pending = max(out.max_pending, core.pending)
                if (n + 1) % every == 0:
                    out.rss_mb.append(_rss_mb())
            out.seconds = time.perf_counter() - t0
        finally:
            core.close()
    if out.acked != count:
        raise RuntimeError(f"acked {out.acked} of {count}")
    return out


def run_backpressure(
    count: int, *, max_pending: int = BP_MAX_PENDING, samples: int = 10
) -> LoadResult:
    """A consumer at half the producer's pace against `max_pending`: refusals cap memory."""
    template = make_trajectories()
    out = LoadResult(record_bytes=len(msgspec.msgpack.encode(template)))
    every = max(count // samples, 1)
    with tempfile.TemporaryDirectory(prefix="dxsim-broker-bp-") as tmp:
        core = BrokerCore.open(
            os.path.join(tmp, "log"), fsync_every=FSYNC_EVERY, max_pending=max_pending
        )
        gc.collect()
        out.rss_open_mb = _rss_mb()
        t0 = time.perf_counter()
        n = attempts = 0
        try:
            while n < count:
                attempts += 1
                try:
                    core.publish(_nth(template, n))
                except ActorError as exc:
                    if exc.code != ErrorCode.OVERLOADED:
                        raise
                    out.refused += 1  # retried on a later attempt, as the scheduler does
                else:
                    n += 1
                    out.published += 1
                    if n % every == 0:
                        out.rss_mb.append(_rss_mb())
                out.max_pending = max(out.max_pending, core.pending)
                if attempts % (2 * GROUP_SIZE) == 0:  # one group per two groups offered
                    _consume(core, out, max_groups=1)
            out.seconds = time.perf_counter() - t0
        finally:
            core.close()
    if out.max_pending > max_pending:
        raise RuntimeError(f"the broker held {out.max_pending} > max_pending {max_pending}")
    return out


def fresh(fn: Callable[..., LoadResult], *args: Any, **kwargs: Any) -> LoadResult:
    """Run `fn` in a new interpreter, so that its RSS samples start from a cold process every
    round (and not from memory an earlier round freed)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def bench(ctx: Context) -> list[Row]:
    count = ctx.scale(100_000, 400)
    load = fresh(run_load, count)
    windowed = fresh(run_load, count, max_seen_ids=SMALL_WINDOW)
    durable = run_load(ctx.scale(1_000, 80), fsync_every=1, samples=1)
    limit = ctx.scale(BP_MAX_PENDING, 100)
    bp = fresh(run_backpressure, ctx.scale(30_000, 400), max_pending=limit)
    log.info(
        "broker_load: %.0f traj/s, %.1f MB/s, RSS open %.1f, %.1f -> %.1f MB (max %.1f); fsync=1: "
        "%.0f traj/s; backpressure: %d refused, max pending %d",
        load.rate,
        load.mb_per_s,
        load.rss_open_mb,
        load.rss_mb[0],
        load.rss_mb[-1],
        max(load.rss_mb),
        durable.rate,
        bp.refused,
        bp.max_pending,
    )
    size = f"{count} x {load.record_bytes / 1024:.1f} KB, groups of {GROUP_SIZE}"
    return [
        Row(BENCH, "traj_per_s", load.rate, "traj/s", f"{size}, fsync every {FSYNC_EVERY}"),
        Row(BENCH, "mb_per_s", load.mb_per_s, "MB/s", "log records"),
        Row(BENCH, "rss_open_mb", load.rss_open_mb, "MB", "broker open, nothing published"),
        Row(BENCH, "rss_first_mb", load.rss_mb[0], "MB", f"after {count // 10} publishes"),
        Row(BENCH, "rss_last_mb", load.rss_mb[-1], "MB", f"after {count}"),
        Row(BENCH, "rss_max_mb", max(load.rss_mb), "MB"),
        Row(BENCH, "rss_growth_mb", load.rss_mb[-1] - load.rss_mb[0], "MB", "last - first"),
        Row(BENCH, "max_pending", float(load.max_pending), "traj", "consumer keeps up"),
        Row(
            BENCH,
            "rss_growth_mb_window10k",
            windowed.rss_mb[-1] - windowed.rss_mb[0],
            "MB",
            f"max_seen_ids={SMALL_WINDOW}",
        ),
        Row(BENCH, "traj_per_s_window10k", windowed.rate, "traj/s", f"max_seen_ids={SMALL_WINDOW}"),
        Row(
            BENCH,
            "rss_last_mb_window10k",
            windowed.rss_mb[-1],
            "MB",
            f"max_seen_ids={SMALL_WINDOW}",
        ),
        Row(BENCH, "traj_per_s_fsync1", durable.rate, "traj/s", "fsync every record"),
        Row(BENCH, "mb_per_s_fsync1", durable.mb_per_s, "MB/s", "fsync every record"),
        Row(BENCH, "bp_traj_per_s", bp.rate, "traj/s", "consumer at half pace"),
        Row(BENCH, "bp_refused", float(bp.refused), "publishes", "OVERLOADED, retried"),
        Row(BENCH, "bp_max_pending", float(bp.max_pending), "traj", f"limit {limit}"),
        Row(BENCH, "bp_rss_first_mb", bp.rss_mb[0], "MB"),
        Row(BENCH, "bp_rss_max_mb", max(bp.rss_mb), "MB"),
        Row(BENCH, "bp_rss_last_mb", bp.rss_mb[-1], "MB"),
    ]


if __name__ == "__main__":
    import sys

    result = bench(Context(quick="--quick" in sys.argv))
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
