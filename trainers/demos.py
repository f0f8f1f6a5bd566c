"""A cold start before GRPO: behaviour cloning of a scripted demonstrator's episodes.

A policy trained from scratch by RL alone spends its first minutes finding which diagnosis goes
with which presentation (one bit of reward per episode), and in 30 minutes on two cores it never
learned to read what its questions and exams return. Supervised, the same model learns the
presentation-to-diagnosis map in seconds. So, as LLM RL pipelines do with a cold-start SFT set,
the learner can first clone a demonstrator (by default the naive-Bayes clinician) on the
training cases, and then improve on it with GRPO.

The demonstrator plays each case under the spec's rules with the spec's Patient, Examiner and Judge,
in process (`trainers.eval_agents`), wrapped by `Recorder`, which writes every turn as the `hf`
agent would have: the same prompt (`actors.lm.request_prompt`) and the action's tokens under the
policy's grammar. An action the grammar cannot express (an order of several exams, unless the policy
orders exam lists, `PolicyConfig.exams_per_order`; a differential) drops its episode. Episodes the
Judge marked wrong are dropped unless `correct_only` is off. The rows are packed like training rows
(`trainers.batch`), and the policy maximises their completions' log-likelihood for `minutes`
(counted in the training budget), with its own AdamW; the GRPO optimiser starts afterwards."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
import trio

from actors.lm import Policy, request_prompt, span_scores
from engine.actor import Actor, handles, is_async
from engine.spec import ClusterSpec
from engine.worker import build_actor
from protocols import Diagnose, Trajectory
from protocols.arrays import pack_floats, pack_ids
from protocols.dialects import get_dialect
from protocols.messages import ActReply, ActRequest
from trainers.batch import Row, build_batch
from trainers.eval_agents import Services, evaluate, load_cases, spec_actors

log = structlog.get_logger("trainers.demos")

__all__ = ["DemosConfig", "Recorder", "clone", "collect"]

_NATIVE = get_dialect("native")


class DemosConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Off while `agent` is empty."""

    agent: str = ""  # the demonstrator, "module:Class" (an `engine.actor.Actor` of service agent)
    agent_config: dict[str, Any] = msgspec.field(default_factory=dict)
    cases: int = 2000  # the first cases of the spec's training set
    minutes: float = 1.0  # of cloning, counted in the training minutes
    steps: int = 0  # ... or stop after this many updates, if sooner (0: no limit)
    lr: float = 2e-3  # peak; cosine decay to `lr * lr_floor` over the clone (time or steps)
    lr_floor: float = 0.1
    batch: int = 64  # episodes per update
    correct_only: bool = True  # clone only the episodes the Judge scored correct
    # torch threads while cloning (0: the learner's own). While the learner clones, the agents
    # have nothing to generate, so on one machine the clone may take their cores: 2 threads made
    # an update of the default policy 1.65x faster than 1 on this 2-core machine (0.24 s/0.40 s).
    threads: int = 0

    def __post_init__(self) -> None:
        if self.cases < 1 or self.minutes <= 0 or self.lr <= 0 or self.batch < 1 or self.steps < 0:
            raise ValueError("DemosConfig: cases and batch >= 1, minutes and lr > 0, steps >= 0")
        if self.threads < 0:
            raise ValueError("DemosConfig: threads must be >= 0 (0: the learner's)")
        if not 0 <= self.lr_floor <= 1:
            raise ValueError("DemosConfig: lr_floor must be in [0, 1]")

    @property
    def enabled(self) -> bool:
        return bool(self.agent)


class Recorder(Actor):
    """Service "agent": a scripted agent whose turns carry the `hf` policy's token ids.

    The reply is the action's text under the policy's grammar (the episode parses it, as it
    parses the `hf` agent's), with the prompt and completion ids; its log-probabilities are 0
    (they are not the policy's). An action outside the grammar comes back as the demonstrator
    gave it, without ids, so its episode is not cloned."""

    service = "agent"

    def __init__(self, demonstrator: Actor, policy: Policy) -> None:
        super().__init__(None)
        self.demonstrator = demonstrator
        self.policy = policy
        self.inner = demonstrator.handlers()[ActRequest]

    @handles(ActRequest)
    async def act(self, request: ActRequest) -> ActReply:
        reply = self.inner(request)
        if is_async(self.inner):
            reply = await reply
        action = reply.action
        if isinstance(action, Diagnose):
            action = Diagnose(name=action.name)  # the grammar's diagnoses carry no differential
        text = _NATIVE.render_action(action) if action is not None else reply.text
        ids = self.policy.grammar.encode(text.strip())
        if ids is None:
            return reply
        return ActReply(
            text=text,
            prompt_ids=pack_ids(request_prompt(self.policy, request)),
            token_ids=pack_ids(list(ids)),
            logprobs=pack_floats([0.0] * len(ids)),
        )


async def collect(config: DemosConfig, spec: ClusterSpec, policy: Policy) -> list[Row]:
    """Play the demonstrator on the first `config.cases` training cases; the rows to clone."""
    # A large bank takes seconds to build: off the event loop, so heartbeats go on meanwhile.
    sched = spec.scheduler
    cases = await trio.to_thread.run_sync(load_cases, sched.cases, sched.cases_args, config.cases)
    shared = spec_actors(spec)
    demonstrator = build_actor(config.agent, config.agent_config)
    actors = [*shared.values(), demonstrator]
    for actor in actors:
        await actor.start()
    try:
        recorder = Recorder(demonstrator, policy)
        services = Services({**shared, "agent": recorder})
        trajs = await evaluate(services, cases, spec.rules, concurrency=64, progress=False)
    finally:
        for actor in actors:
            await actor.close()
    kept = [t for t in trajs if _clonable(t, config.correct_only)]
    correct = sum(bool(t.verdict and t.verdict.correct) for t in trajs)
    log.info(
        "demonstrations",
        agent=config.agent,
        episodes=len(trajs),
        accuracy=round(correct / max(len(trajs), 1), 4),
        cloned=len(kept),
    )
    if not kept:
        raise ValueError(f"demos: no episode of {config.agent} can be cloned")
    return build_batch([[t] for t in kept]).rows


def _clonable(t: Trajectory, correct_only: bool) -> bool:
    if not t.turns or any(not turn.token_ids for turn in t.turns):
        return False
    return not correct_only or bool(t.verdict and t.verdict.correct)


def clone(
    policy: Policy,
    rows: list[Row],
    config: DemosConfig,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Maximise the log-likelihood of the rows' completions for `config.minutes` (or
    `config.steps` updates): minibatches of `config.batch` rows drawn at random, mean over their
    tokens, the learning rate on a cosine from `lr` down to `lr * lr_floor` along whichever of
    the two budgets runs out first, and at least one update, unless `should_stop()` says so
    before an update (then `stopped` is 1); returns what it did."""
    import torch

    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _clone(policy, rows, config, temperature, seed, should_stop or (lambda: False))
    finally:
        torch.set_num_threads(threads)


def _clone(
    policy: Policy,
    rows: list[Row],
    config: DemosConfig,
    temperature: float,
    seed: int,
    should_stop: Callable[[], bool],
) -> dict[str, float]:
    import torch

    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    rng = random.Random(seed)
    t0 = time.monotonic()
    steps, first, loss_value = 0, float("nan"), float("nan")
    model.train()
    lr = config.lr
    stopped = False
    while (done := _progress(config, time.monotonic() - t0, steps)) < 1.0 or not steps:
        if should_stop():
            stopped = True
            break
        lr = config.lr * (
            config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * done))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = rng.sample(rows, min(config.batch, len(rows)))
        logps, _ = span_scores(
            policy, [r.ids for r in batch], [r.spans for r in batch], temperature=temperature
        )
        loss = -torch.cat(logps).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        first = loss_value if steps == 0 else first
        steps += 1
    stats = {
        "rows": float(len(rows)),
        "steps": float(steps),
        "loss_first": round(first, 4),
        "loss_last": round(loss_value, 4),
        "lr_last": lr,
        "seconds": round(time.monotonic() - t0, 2),
        "threads": float(torch.get_num_threads()),
        "stopped": float(stopped),
    }
    log.info("cloned", **stats)
    return stats


def _progress(config: DemosConfig, elapsed_s: float, steps: int) -> float:
    """How much of the clone's budget is spent, 0 to 1: time or updates, whichever is further."""
    done = elapsed_s / (config.minutes * 60)
    return min(max(done, steps / config.steps) if config.steps else done, 1.0)
