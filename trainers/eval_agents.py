"""Agents evaluation: run agent policies on a case set and report what they achieve.

`python -m trainers.eval_agents --agents random,heuristic --cases 500 --out runs/eval` drives
`engine.episode.Episode` in process (no sockets) with the actors' own handlers: the agent, the
Patient (`actors.patient:RecordPatient`), the Examiner (`actors.examiner:RecordExaminer`) and the
Judge (`actors.judge:RulesJudge`), each named by import string so another backend is one flag
away. Handlers may be plain functions or coroutines; episodes run as trio tasks up to
`--concurrency` at a time.

Per agent it reports diagnosis accuracy (the Judge's `correct`), the diagnosis score with ICD-10
partial credit, exam precision / recall / F1 against the cases' key exams, turns, exam cost and
reward, each as a mean with a seeded percentile-bootstrap 95% interval, overall and per specialty.
It writes `results.json`, `results.md` (the table it prints) and `accuracy_vs_cost.png` (accuracy
against mean cost, one point per agent with 95% error bars, as SDBench reports it; with
`--budgets 0,100,200` also one curve per agent over those exam budgets, 0 meaning unlimited).

An aborted episode (an actor failed, no verdict) counts as wrong with no exam credit and zero
reward. numpy and matplotlib (the "clinical" extra) are imported only when needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import trio

from engine.actor import Actor, is_async
from engine.episode import Call, Episode, EpisodeError, Finish, Rules
from engine.spec import ClusterSpec
from engine.worker import build_actor, resolve
from protocols import Case, Trajectory

__all__ = [
    "AGENTS",
    "METRICS",
    "bootstrap_ci",
    "evaluate",
    "load_cases",
    "main",
    "markdown",
    "run_episode",
    "summarise",
]

AGENTS = {
    "random": "actors.agent:RandomAgent",
    "heuristic": "actors.agent:HeuristicAgent",
}
PATIENT = "actors.patient:RecordPatient"
EXAMINER = "actors.examiner:RecordExaminer"
JUDGE = "actors.judge:RulesJudge"

# metric -> (label, format) in the tables
METRICS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", "{:.3f}"),
    "diagnosis_score": ("dx score", "{:.3f}"),
    "exam_precision": ("exam P", "{:.3f}"),
    "exam_recall": ("exam R", "{:.3f}"),
    "exam_f1": ("exam F1", "{:.3f}"),
    "turns": ("turns", "{:.2f}"),
    "cost": ("cost", "{:.1f}"),
    "reward": ("reward", "{:.3f}"),
}
TABLE_METRICS = ("accuracy", "exam_precision", "exam_recall", "exam_f1", "turns", "cost", "reward")
SPECIALTY_METRICS = ("accuracy", "exam_f1", "turns", "cost")


# --- statistics ----------------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap interval (seeded)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1 or resamples <= 0:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // x.size)  # bound memory: resample in blocks
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # keep the interval around the mean even when float rounding says otherwise
    return mean, float(min(low, mean)), float(max(high, mean))


def _rows(trajectories: Sequence[Trajectory]) -> list[dict[str, float]]:
    rows = []
    for t in trajectories:
        v = t.verdict
        if v is None:  # aborted: no verdict, counted as a failure
            rows.append(
                {
                    "accuracy": 0.0,
                    "diagnosis_score": 0.0,
                    "exam_precision": 0.0,
                    "exam_recall": 0.0,
                    "exam_f1": 0.0,
                    "turns": float(len(t.turns)),
                    "cost": t.cost,
                    "reward": 0.0,
                }
            )
            continue
        rows.append(
            {
                "accuracy": float(v.correct),
                "diagnosis_score": v.diagnosis_score,
                "exam_precision": v.exam_precision,
                "exam_recall": v.exam_recall,
                "exam_f1": v.exam_f1,
                "turns": float(v.turns),
                "cost": v.cost,
                "reward": v.reward,
            }
        )
    return rows


def _stats(rows: list[dict[str, float]], resamples: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for i, metric in enumerate(METRICS):
        mean, low, high = bootstrap_ci([r[metric] for r in rows], resamples, seed + i)
        out[metric] = {"mean": mean, "low": low, "high": high}
    return out


def summarise(
    trajectories: Sequence[Trajectory], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Overall and per-specialty means with bootstrap 95% intervals, and terminal counts."""
    rows = _rows(trajectories)
    by: dict[str, list[dict[str, float]]] = {}
    for t, row in zip(trajectories, rows, strict=True):
        by.setdefault(t.specialty or "unknown", []).append(row)
    return {
        "overall": _stats(rows, resamples, seed),
        "per_specialty": {s: _stats(by[s], resamples, seed) for s in sorted(by)},
        "terminals": dict(Counter(t.terminal.value for t in trajectories)),
        "reasons": dict(Counter(t.reason for t in trajectories).most_common(10)),
    }


# --- running episodes ----------------------------------------------------------------------------


class Services:
    """Actor instances by service; a request goes to the handler of its type (sync or async)."""

    def __init__(self, actors: dict[str, Actor]) -> None:
        self.actors = actors
        self.handlers = {service: actor.handlers() for service, actor in actors.items()}

    async def call(self, service: str, request: Any) -> Any:
        handler = self.handlers[service].get(type(request))
        if handler is None:
            raise EpisodeError(f"{service} has no handler for {type(request).__name__}")
        if is_async(handler):
            return await handler(request)
        return handler(request)


def spec_actors(spec: ClusterSpec) -> dict[str, Actor]:
    """The spec's Patient, Examiner and Judge, built in this process (the agent is the caller's)."""
    return {
        name: build_actor(spec.services[name].actor, spec.services[name].config)
        for name in ("patient", "examiner", "judge")
    }


async def run_episode(services: Services, episode: Episode) -> Trajectory:
    """Drive one episode to its `Finish`; an actor failure aborts it (never lost, never raised)."""
    step: Call | Finish = episode.start()
    while isinstance(step, Call):
        try:
            replies = [await services.call(step.service, r) for r in step.requests]
            step = episode.advance(replies, now=time.time())
        except Exception as exc:  # the scheduler's rule: publish the episode as aborted
            return episode.fail(f"{type(exc).__name__}: {exc}", now=time.time()).trajectory
    return step.trajectory


class _Progress:
    """Progress on stderr: a rewritten counter line on a terminal, else a line per 10%."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        if not self.enabled:
            return
        last = self.done == self.total
        if self.tty:  # one line, rewritten at most ten times a second
            if now - self.last < 0.1 and not last:
                return
            end = "\n" if last else ""
            prefix = "\r"
        else:  # a line per tenth of the way
            if self.done * 10 // self.total == (self.done - 1) * 10 // self.total and not last:
                return
            end, prefix = "\n", ""
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        line = f"{self.label}: {self.done}/{self.total} episodes ({rate:.1f}/s)"
        sys.stderr.write(prefix + line + end)
        sys.stderr.flush()


async def evaluate(
    services: Services,
    cases: Sequence[Case],
    rules: Rules,
    *,
    label: str = "agent",
    concurrency: int = 16,
    progress: bool = True,
) -> list[Trajectory]:
    """One episode per case under `rules`, as trio tasks; trajectories in case order."""
    out: list[Trajectory | None] = [None] * len(cases)
    limiter = trio.CapacityLimiter(max(1, concurrency))
    bar = _Progress(label, len(cases), progress)

    async def one(i: int, case: Case) -> None:
        async with limiter:
            # the id does not depend on the label or budget: seeded agents see the same episode
            episode = Episode(f"eval/{case.id}/{i}", case, rules, now=time.time())
            out[i] = await run_episode(services, episode)
        bar.tick()

    async with trio.open_nursery() as nursery:
        for i, case in enumerate(cases):
            nursery.start_soon(one, i, case)
    return [t for t in out if t is not None]


# --- cases and agents ----------------------------------------------------------------------------


def load_cases(target: str, args: Any = None, limit: int | None = None) -> list[Case]:
    """Call `module:function` with `args` (a dict of keyword arguments or a list of positional
    ones) and keep the first `limit` cases."""
    fn = resolve(target)
    if not callable(fn):
        raise SystemExit(f"{target!r} is not callable")
    if args is None:
        result = fn()
    elif isinstance(args, dict):
        result = fn(**args)
    elif isinstance(args, list):
        result = fn(*args)
    else:
        result = fn(args)
    try:
        cases = list(result)
    except TypeError:
        raise SystemExit(f"{target!r} returned {type(result).__name__}, not cases") from None
    bad = [type(c).__name__ for c in cases if not isinstance(c, Case)]
    if bad:
        raise SystemExit(f"{target!r} returned {bad[0]} items, expected protocols.Case")
    return cases[:limit] if limit else cases


def _agent_specs(text: str) -> list[tuple[str, str]]:
    """ "random,heuristic,mine=pkg.mod:Class" -> [(label, import string)]."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part:
            label, _, target = part.partition("=")
        elif ":" in part:
            label, target = part.rpartition(":")[2], part
        elif part in AGENTS:
            label, target = part, AGENTS[part]
        else:
            raise SystemExit(f"unknown agent {part!r}: use {sorted(AGENTS)} or module:Class")
        specs.append((label.strip(), target.strip()))
    if not specs:
        raise SystemExit("no agents given")
    return specs


def _agent_config(target: str, given: dict[str, Any] | None, seed: int) -> dict[str, Any] | None:
    config = dict(given or {})
    cls = resolve(target)
    fields = getattr(getattr(cls, "Config", None), "__struct_fields__", ())
    if "seed" in fields and "seed" not in config:
        config["seed"] = seed
    return config or None


# --- reports -------------------------------------------------------------------------------------


def _cell(stat: dict[str, float], fmt: str) -> str:
    m, lo, hi = stat["mean"], stat["low"], stat["high"]
    if any(math.isnan(x) for x in (m, lo, hi)):
        return "-"
    return f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def markdown(results: dict[str, Any]) -> str:
    """The overall table, the per-specialty table and (if any) the budget sweep, as markdown."""
    cfg = results["config"]
    lines = [
        f"Agents on {cfg['n_cases']} cases ({cfg['cases']}), max {cfg['max_turns']} turns, "
        f"budget {cfg['budget'] or 'unlimited'}; means with bootstrap 95% intervals "
        f"({cfg['resamples']} resamples, seed {cfg['seed']}).",
        "",
        "| agent | n | " + " | ".join(METRICS[m][0] for m in TABLE_METRICS) + " |",
        "|---|---:|" + "---:|" * len(TABLE_METRICS),
    ]
    for name, res in results["agents"].items():
        o = res["overall"]
        cells = [_cell(o[m], METRICS[m][1]) for m in TABLE_METRICS]
        lines.append(f"| {name} | {o['n']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per specialty:",
        "",
        "| specialty | agent | n | " + " | ".join(METRICS[m][0] for m in SPECIALTY_METRICS) + " |",
        "|---|---|---:|" + "---:|" * len(SPECIALTY_METRICS),
    ]
    specialties = sorted({s for r in results["agents"].values() for s in r["per_specialty"]})
    for spec in specialties:
        for name, res in results["agents"].items():
            st = res["per_specialty"].get(spec)
            if st is None:
                continue
            cells = [_cell(st[m], METRICS[m][1]) for m in SPECIALTY_METRICS]
            lines.append(f"| {spec} | {name} | {st['n']} | " + " | ".join(cells) + " |")
    sweep = results.get("sweep") or {}
    if sweep:
        lines += [
            "",
            "Budget sweep (0 = unlimited):",
            "",
            "| agent | budget | accuracy | exam F1 | cost | turns |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, points in sweep.items():
            for p in points:
                cells = [
                    _cell(p[m], METRICS[m][1]) for m in ("accuracy", "exam_f1", "cost", "turns")
                ]
                lines.append(f"| {name} | {p['budget']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """Accuracy against mean exam cost: a point per agent with 95% error bars, and a curve per
    agent over the budget sweep when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sweep = results.get("sweep") or {}
    for i, (name, res) in enumerate(results["agents"].items()):
        colour = colours[i % len(colours)]
        acc, cost = res["overall"]["accuracy"], res["overall"]["cost"]
        ax.errorbar(
            [cost["mean"]],
            [acc["mean"]],
            xerr=[[cost["mean"] - cost["low"]], [cost["high"] - cost["mean"]]],
            yerr=[[acc["mean"] - acc["low"]], [acc["high"] - acc["mean"]]],
            fmt="o",
            color=colour,
            capsize=4,
            markersize=7,
            label=name,
        )
        points = sweep.get(name) or []
        if points:
            xs = [p["cost"]["mean"] for p in points]
            ys = [p["accuracy"]["mean"] for p in points]
            lo = [p["accuracy"]["mean"] - p["accuracy"]["low"] for p in points]
            hi = [p["accuracy"]["high"] - p["accuracy"]["mean"] for p in points]
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                fmt="--",
                marker=".",
                color=colour,
                alpha=0.7,
                capsize=2,
                label=f"{name} (budget sweep)",
            )
            for p, x, y in zip(points, xs, ys, strict=True):
                tag = "inf" if p["budget"] == 0 else f"{p['budget']:g}"
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("mean exam cost per case")
    ax.set_ylabel("diagnosis accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Accuracy vs cost ({results['config']['n_cases']} cases, 95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- CLI -----------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainers.eval_agents",
        description="Run agent policies on a case set; report accuracy, exam F1, turns and cost "
        "with bootstrap 95%% intervals, overall and per specialty.",
    )
    p.add_argument("--agents", default="random,heuristic", help="names or label=module:Class")
    p.add_argument("--agent-config", default="{}", help='JSON: {"heuristic": {"confident": 0.8}}')
    p.add_argument("--cases", type=int, default=500, help="number of cases (0: all loaded)")
    p.add_argument("--seed", type=int, default=0, help="case bank, random agent and bootstrap")
    p.add_argument("--max-turns", type=int, default=12)
    p.add_argument("--budget", type=float, default=0.0, help="exam budget per case; 0 unlimited")
    p.add_argument("--budgets", default="", help="budget sweep, e.g. 0,100,200,400")
    p.add_argument("--dialect", default="native")
    p.add_argument("--out", default="", help="output directory (default runs/eval-agents-TIME)")
    p.add_argument("--cases-from", default="", help="module:function returning cases")
    p.add_argument("--cases-args", default="", help="JSON kwargs (object) or args (array)")
    p.add_argument("--patient", default=PATIENT)
    p.add_argument("--examiner", default=EXAMINER)
    p.add_argument("--judge", default=JUDGE)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def _json_arg(text: str, flag: str) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{flag}: not valid JSON ({exc})") from None


def _budgets(text: str) -> list[float]:
    try:
        return [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"--budgets: expected numbers separated by commas, got {text!r}") from None


async def _run(
    args: argparse.Namespace, specs: list[tuple[str, str]], cases: list[Case]
) -> dict[str, Any]:
    agent_cfg = _json_arg(args.agent_config, "--agent-config") or {}
    shared = {
        "patient": build_actor(args.patient, None),
        "examiner": build_actor(args.examiner, None),
        "judge": build_actor(args.judge, None),
    }
    sweep_budgets = _budgets(args.budgets)
    rules = Rules(max_turns=args.max_turns, budget=args.budget, dialect=args.dialect)
    agents: dict[str, Any] = {}
    sweep: dict[str, list[dict[str, Any]]] = {}

    async def run(services: Services, label: str, rules: Rules) -> list[Trajectory]:
        return await evaluate(
            services,
            cases,
            rules,
            label=label,
            concurrency=args.concurrency,
            progress=not args.quiet,
        )

    for actor in shared.values():  # started once, shared by every agent's episodes
        await actor.start()
    try:
        for label, target in specs:
            config = _agent_config(target, agent_cfg.get(label), args.seed)
            agent = build_actor(target, config)
            services = Services({**shared, "agent": agent})
            await agent.start()
            try:
                trajs = await run(services, label, rules)
                summary = summarise(trajs, args.resamples, args.seed)
                agents[label] = {"target": target, "config": config, **summary}
                for budget in sweep_budgets:
                    swept = msgspec.structs.replace(rules, budget=budget)
                    trajs = await run(services, f"{label} budget {budget:g}", swept)
                    overall = summarise(trajs, args.resamples, args.seed)["overall"]
                    sweep.setdefault(label, []).append({"budget": budget, **overall})
            finally:
                await agent.close()
    finally:
        for actor in shared.values():
            await actor.close()
    return {"agents": agents, "sweep": sweep}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    specs = _agent_specs(args.agents)
    if args.cases_from:
        source = args.cases_from
        cases = load_cases(source, _json_arg(args.cases_args, "--cases-args"), args.cases or None)
    else:
        source = f"cases.bank:builtin(n={args.cases}, seed={args.seed})"
        cases = load_cases("cases.bank:builtin", {"n": args.cases or 2000, "seed": args.seed})
    if not cases:
        raise SystemExit("no cases to evaluate")
    out = args.out or os.path.join("runs", time.strftime("eval-agents-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    started = time.time()
    run = trio.run(_run, args, specs, cases)
    results = {
        "config": {
            "cases": source,
            "n_cases": len(cases),
            "seed": args.seed,
            "max_turns": args.max_turns,
            "budget": args.budget,
            "budgets": _budgets(args.budgets),
            "dialect": args.dialect,
            "patient": args.patient,
            "examiner": args.examiner,
            "judge": args.judge,
            "resamples": args.resamples,
            "seconds": round(time.time() - started, 2),
        },
        **run,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=False)
    table = markdown(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    if not args.no_plot:
        plot(results, os.path.join(out, "accuracy_vs_cost.png"))
    sys.stdout.write(table)
    sys.stderr.write(
        f"wrote {out}/results.json, results.md"
        + ("" if args.no_plot else ", accuracy_vs_cost.png")
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
