"""The scripted baselines of a training run, measured under that run's own spec.

A learning curve means little without the levels it should rise from and aim for: the random
policy (chance) and the naive-Bayes clinician. This runs them in process (no sockets) on the
given cases (the run's held-out set, `trainers.heldout`) or else the first `n` cases of the spec's
case set, with its rules and its Patient / Examiner / Judge backends, via `trainers.eval_agents`,
and returns overall means with 95% bootstrap intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import trio

from engine.spec import ClusterSpec
from engine.worker import build_actor
from protocols import Case
from trainers.eval_agents import Services, evaluate, load_cases, spec_actors, summarise

__all__ = ["run_baselines"]

METRICS = ("accuracy", "reward", "exam_f1", "turns")


async def run_baselines(
    spec_path: Path,
    agents: dict[str, str],
    n: int,
    cases: list[Case] | None = None,
    configs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`agents`: label -> "module:Class"; `configs`: label -> that agent's config, if any."""
    spec = msgspec.json.decode(spec_path.read_bytes(), type=ClusterSpec)
    if cases is None:
        sched = spec.scheduler
        cases = await trio.to_thread.run_sync(load_cases, sched.cases, sched.cases_args, n)
    shared = spec_actors(spec)
    out: dict[str, Any] = {}
    for actor in shared.values():
        await actor.start()
    try:
        for label, target in agents.items():
            agent = build_actor(target, (configs or {}).get(label))
            await agent.start()
            try:
                services = Services({**shared, "agent": agent})
                trajs = await evaluate(services, cases, spec.rules, label=label, progress=False)
            finally:
                await agent.close()
            overall = summarise(trajs, resamples=200)["overall"]
            out[label] = {m: overall[m]["mean"] for m in METRICS}
            out[label]["ci95"] = {m: [overall[m]["low"], overall[m]["high"]] for m in METRICS}
            out[label]["n"] = overall["n"]
    finally:
        for actor in shared.values():
            await actor.close()
    return out
