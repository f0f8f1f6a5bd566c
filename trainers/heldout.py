"""The policy on patients it never trains on, measured while it trains.

Training-batch accuracy mixes learning with memorising: the default bank has 2,000 cases, and a
30-minute run sees each one about 13 times. That run's last policy scored 23% on its first 300
training cases and 15% on 300 fresh ones. So rank 0 also runs the current weights every
`every_min` minutes of training (at step 0, and once more at the end) on a held-out case set, in
process: the same rules, the spec's Patient / Examiner / Judge, and an `hf` agent that samples
as the training agents do, and once more with greedy decoding (`greedy`: the most probable action
at every turn, as a trained agent would be deployed). It appends one line per evaluation to
`eval.jsonl`, which the learning curve draws. The scripted baselines are measured on the same cases
(`trainers.baselines`), so the curve compares like with like.

An evaluation of 300 four-turn episodes takes a second or two of the learner's core per pass.
That time counts in the training budget.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from actors.hf_agent import HFAgent, HFAgentConfig
from actors.lm import PolicyConfig
from engine.actor import Actor
from engine.logs import read_json_lines
from engine.spec import ClusterSpec
from protocols import Case
from trainers.eval_agents import Services, evaluate, load_cases, spec_actors, summarise

log = structlog.get_logger("trainers.heldout")

__all__ = ["HeldOut", "HeldOutConfig"]

METRICS = ("accuracy", "reward", "exam_f1", "turns")


class HeldOutConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Off while `cases` is empty. The default spec names the built-in generator with another
    seed: fresh patients drawn from the same conditions as the training bank."""

    cases: str = ""  # "module:function" returning the held-out cases
    cases_args: dict[str, Any] = msgspec.field(default_factory=dict)
    every_min: float = 2.5  # minutes of training between evaluations
    max_batch: int = 128  # the evaluating agent's batch (all cases run at once)
    # Also run the cases with greedy decoding (the most probable action at every turn), the way
    # a trained agent would be deployed; the line's `greedy` holds its metrics. About as fast as
    # the sampled pass.
    greedy: bool = True

    def __post_init__(self) -> None:
        if self.every_min <= 0 or self.max_batch < 1:
            raise ValueError("HeldOutConfig: every_min must be > 0 and max_batch >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.cases)


def held_out_cases(config: HeldOutConfig) -> list[Case]:
    try:
        return load_cases(config.cases, config.cases_args)
    except (SystemExit, ValueError, TypeError) as exc:  # SystemExit: load_cases speaks to a CLI
        raise ValueError(f"held-out cases ({config.cases}): {exc}") from None


class HeldOut:
    """Evaluates a model's weights on the held-out cases; one instance per run (rank 0)."""

    def __init__(
        self,
        config: HeldOutConfig,
        spec: ClusterSpec,
        policy: PolicyConfig,
        temperature: float,
        out: Path,
        threads: int = 1,
    ) -> None:
        self.config = config
        self.spec = spec
        self.out = out

        def agent(t: float) -> HFAgent:
            return HFAgent(
                HFAgentConfig(
                    policy=policy, temperature=t, max_batch=config.max_batch, threads=threads
                )
            )

        self.agent = agent(temperature)
        self.greedy = agent(0.0) if config.greedy else None
        self.services: dict[str, Actor] = spec_actors(spec)
        self.cases: list[Case] = []
        evals = read_json_lines(out)
        self.last_s = evals[-1]["elapsed_s"] if evals else -math.inf  # elapsed at the last eval
        self.version = evals[-1]["version"] if evals else -1  # the version last evaluated

    async def start(self) -> None:
        self.cases = await trio.to_thread.run_sync(held_out_cases, self.config)
        if not self.cases:
            raise ValueError(f"held-out cases: {self.config.cases} returned none")
        for actor in (*self._agents(), *self.services.values()):
            await actor.start()

    async def close(self) -> None:
        for actor in (*self.services.values(), *self._agents()):
            await actor.close()

    def _agents(self) -> list[HFAgent]:
        return [self.agent] if self.greedy is None else [self.agent, self.greedy]

    def due(self, elapsed_s: float) -> bool:
        return elapsed_s - self.last_s >= self.config.every_min * 60

    async def run(self, model: Any, *, step: int, version: int, elapsed_s: float) -> dict[str, Any]:
        """Copy `model`'s weights into the evaluating agents, run every case (sampled, then
        greedy), append the line."""
        t0 = time.monotonic()
        state = model.state_dict()
        sampled = await self._evaluate(self.agent, state)
        line: dict[str, Any] = {
            "step": step,
            "version": version,
            "elapsed_s": round(elapsed_s, 3),
            "n": sampled["n"],
            **_metrics(sampled),
        }
        if self.greedy is not None:
            line["greedy"] = _metrics(await self._evaluate(self.greedy, state))
        line["eval_s"] = round(time.monotonic() - t0, 3)
        with self.out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.last_s, self.version = elapsed_s, version
        greedy = {"greedy_accuracy": line["greedy"]["accuracy"]} if "greedy" in line else {}
        log.info(
            "held-out", **{k: v for k, v in line.items() if k not in ("ci95", "greedy")}, **greedy
        )
        return line

    async def _evaluate(self, agent: HFAgent, state: dict[str, Any]) -> dict[str, Any]:
        policy = agent.policy
        assert policy is not None, "HeldOut.start() first"
        await trio.to_thread.run_sync(policy.model.load_state_dict, state)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.run)
            services = Services({**self.services, "agent": agent})
            trajs = await evaluate(
                services, self.cases, self.spec.rules, concurrency=len(self.cases), progress=False
            )
            nursery.cancel_scope.cancel()
        overall: dict[str, Any] = summarise(trajs, resamples=200)["overall"]
        return overall


def _metrics(overall: dict[str, Any]) -> dict[str, Any]:
    """Means and 95% intervals, as `eval.jsonl` keeps them."""
    return {
        **{m: round(overall[m]["mean"], 6) for m in METRICS},
        "ci95": {m: [round(overall[m][k], 6) for k in ("low", "high")] for m in METRICS},
    }
