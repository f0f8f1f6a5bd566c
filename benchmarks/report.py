"""Medians, the ratios the performance targets are stated in, and the markdown table.

A comparison is `subject / baseline` of two (benchmark, metric) medians. It is computed when both
rows are present and shown as "n/a" otherwise (e.g. before the dxsim benchmarks exist).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

import msgspec

from benchmarks.common import Row

__all__ = [
    "COMPARISONS",
    "BenchmarkRun",
    "Comparison",
    "ComparisonResult",
    "Report",
    "Summary",
    "compare",
    "markdown",
    "summarize",
]


class Comparison(msgspec.Struct, frozen=True):
    title: str
    subject: tuple[str, str]  # (benchmark, metric)
    baseline: tuple[str, str]
    op: str = ""  # ">=" or "<=" against `threshold`; "" for an informational ratio
    threshold: float = 0.0


COMPARISONS: tuple[Comparison, ...] = (
    Comparison(
        "engine overhead, 256 episodes in flight (dxsim / Ray)",
        ("dxsim_episodes", "episodes_c256"),
        ("ray_episodes", "episodes_c256"),
        ">=",
        5.0,
    ),
    Comparison(
        "engine overhead, one episode at a time (dxsim / Ray)",
        ("dxsim_episodes", "episodes_serial"),
        ("ray_episodes", "episodes_serial"),
    ),
    Comparison(
        "round-trip latency p50 (dxsim / raw pyzmq + msgspec)",
        ("dxsim_roundtrip", "rt_p50"),
        ("raw_zmq", "rt_p50"),
        "<=",
        2.5,
    ),
    Comparison(
        "round trips/s, serial (dxsim / raw)",
        ("dxsim_roundtrip", "rt_serial"),
        ("raw_zmq", "rt_serial"),
    ),
    Comparison(
        "pipelined msgs/s (dxsim / raw PUSH-PULL with msgspec)",
        ("dxsim_roundtrip", "pipelined"),
        ("raw_zmq", "pushpull_msgspec"),
    ),
    Comparison(
        "asynchrony: trajectories/s at max_staleness 1 (dxsim / turn-synchronous)",
        ("asynchrony", "traj_per_s_dxsim"),
        ("asynchrony", "traj_per_s_sync"),
        ">=",
        2.5,
    ),
    Comparison(
        "asynchrony: inference server busy / wall (dxsim)",
        ("asynchrony", "server_util_dxsim"),
        ("asynchrony", "server_util_full"),
        ">=",
        0.9,
    ),
    Comparison(
        "asynchrony: server busy / wall (turn-synchronous)",
        ("asynchrony", "server_util_sync"),
        ("asynchrony", "server_util_full"),
    ),
    Comparison(
        "asynchrony: the same rule without transport (in process / turn-synchronous)",
        ("asynchrony", "traj_per_s_inprocess"),
        ("asynchrony", "traj_per_s_sync"),
    ),
    Comparison(
        "asynchrony: trajectories/s at max_staleness 2 (dxsim / turn-synchronous)",
        ("asynchrony", "traj_per_s_dxsim_s2"),
        ("asynchrony", "traj_per_s_sync"),
    ),
    Comparison(
        "asynchrony: continuous-batching server (dxsim / turn-synchronous)",
        ("asynchrony", "traj_per_s_dxsim_cb"),
        ("asynchrony", "traj_per_s_sync_cb"),
    ),
    Comparison(
        "broker RSS over 100k trajectories (last / first sample)",
        ("broker_load", "rss_last_mb"),
        ("broker_load", "rss_first_mb"),
        "<=",
        1.1,
    ),
    # The agent receives each version into the blob of the version before (`fetch(into=)`), so
    # that is the steady state the target is judged on; an agent's first fetch is the fresh one.
    Comparison(
        "weight sync, 100M fp32 params to 4 agents (verified fetch into last blob / raw ZeroMQ)",
        ("weight_sync", "reuse_4"),
        ("weight_sync", "raw_4"),
        ">=",
        0.5,
    ),
    Comparison(
        "weight sync, an agent's first version (verified fetch into fresh memory / raw ZeroMQ)",
        ("weight_sync", "fetch_4"),
        ("weight_sync", "raw_4"),
    ),
)


class BenchmarkRun(msgspec.Struct):
    """One benchmark's subprocess: every round's rows, how it ended, what it left behind."""

    name: str
    target: str
    status: str  # ok | failed | timeout
    seconds: float
    rounds: list[list[Row]] = []
    error: str = ""
    strays: list[str] = []  # processes of this benchmark still alive after it ended (killed)


class Summary(msgspec.Struct, frozen=True):
    benchmark: str
    metric: str
    value: float  # median over rounds
    unit: str
    samples: list[float]
    note: str = ""


class ComparisonResult(msgspec.Struct, frozen=True):
    title: str
    subject: str
    baseline: str
    subject_value: float | None
    baseline_value: float | None
    ratio: float | None
    target: str  # ">= 5x", "<= 2.5x" or "" (informational)
    status: str  # pass | fail | n/a | info


class Report(msgspec.Struct):
    run_id: str
    started: str
    finished: str
    quick: bool
    rounds: int
    machine: dict[str, str]
    runs: list[BenchmarkRun]
    results: list[Summary]
    comparisons: list[ComparisonResult]


def summarize(runs: Iterable[BenchmarkRun]) -> list[Summary]:
    """Median of each (benchmark, metric) over the rounds, in first-seen order."""
    grouped: dict[tuple[str, str], list[Row]] = {}
    for run in runs:
        for rows in run.rounds:
            for row in rows:
                grouped.setdefault((row.benchmark, row.metric), []).append(row)
    out = []
    for (bench, metric), rows in grouped.items():
        samples = [r.value for r in rows]
        finite = [v for v in samples if not math.isnan(v)]
        value = statistics.median(finite) if finite else math.nan
        out.append(Summary(bench, metric, value, rows[0].unit, samples, rows[0].note))
    return out


def _key(pair: tuple[str, str]) -> str:
    return f"{pair[0]}.{pair[1]}"


def compare(
    results: Sequence[Summary], comparisons: Sequence[Comparison] = COMPARISONS
) -> list[ComparisonResult]:
    values = {(s.benchmark, s.metric): s.value for s in results}
    out = []
    for c in comparisons:
        subject, baseline = values.get(c.subject), values.get(c.baseline)
        ratio = None
        if subject is not None and baseline and not math.isnan(subject):
            ratio = subject / baseline
        target = f"{c.op} {c.threshold:g}x" if c.op else ""
        if ratio is None:
            status = "n/a"
        elif not c.op:
            status = "info"
        elif (ratio >= c.threshold) if c.op == ">=" else (ratio <= c.threshold):
            status = "pass"
        else:
            status = "fail"
        out.append(
            ComparisonResult(
                c.title,
                _key(c.subject),
                _key(c.baseline),
                subject,
                baseline,
                ratio,
                target,
                status,
            )
        )
    return out


def fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def markdown(report: Report) -> str:
    by_subject = {c.subject: c for c in report.comparisons}
    lines = [
        f"## dxsim benchmarks {report.run_id}"
        + (" (quick: smoke durations, not for comparison)" if report.quick else ""),
        "",
        f"Medians of {report.rounds} rounds. {report.machine.get('summary', '')}",
        "",
        "| benchmark | metric | value | unit | min - max | vs baseline | ratio | target |",
        "|---|---|---:|---|---|---|---:|---|",
    ]
    for s in report.results:
        c = by_subject.get(f"{s.benchmark}.{s.metric}")
        finite = [v for v in s.samples if not math.isnan(v)]
        spread = f"{fmt(min(finite))} - {fmt(max(finite))}" if finite else "n/a"
        vs = c.baseline if c else ""
        ratio = _ratio(c.ratio) if c else ""
        target = f"{c.target} ({c.status})" if c and c.target else ""
        lines.append(
            f"| {s.benchmark} | {s.metric} | {fmt(s.value)} | {s.unit} | {spread} | {vs} "
            f"| {ratio} | {target} |"
        )
    lines += [
        "",
        "| comparison | subject | baseline | ratio | target | status |",
        "|---|---|---|---:|---|---|",
    ]
    for c in report.comparisons:
        lines.append(
            f"| {c.title} | {c.subject} = {fmt(c.subject_value)} | {c.baseline} = "
            f"{fmt(c.baseline_value)} | {_ratio(c.ratio)} | {c.target or 'info'} | {c.status} |"
        )
    problems = [r for r in report.runs if r.status != "ok" or r.strays]
    if problems:
        lines += [""]
        for r in problems:
            detail = r.error.strip().splitlines()[-1] if r.error.strip() else ""
            strays = f"; killed stray processes: {', '.join(r.strays)}" if r.strays else ""
            lines.append(f"- **{r.name}**: {r.status} {detail}{strays}")
    return "\n".join(lines) + "\n"
