"""The CPU GRPO learner process: pull groups, step, publish weights, repeat.

`python -m trainers.learner --hub ENDPOINT --run-dir DIR --groups-per-step N [--config JSON]`
(the cluster starts it when the spec has a `[learner]` table). The loop:

1. lease `groups_per_step` complete GRPO groups from the broker (a long poll: no spinning);
2. build rows (one per generated turn, `trainers.batch`) and take one GRPO step in a worker
   thread, so the process keeps answering weight requests while torch computes;
3. ack the leases, publish the new version on the weight server (manifest + chunks, checksums) and
   tell the head (`WeightsAvailable`), which moves the staleness admission forward and forwards
   the notice to every agent worker, which fetch the version and swap it in whole;
4. append a line to `metrics.jsonl`; every `checkpoint_every` steps write
   `checkpoints/latest.pt` (atomically) and redraw `learning_curve.png`.

Started in a run directory that holds a checkpoint, it resumes from it (version, optimiser, RNG
and elapsed time), so a crashed learner restarted by the supervisor and `engine.cluster up
--resume` continue where the last checkpoint left off. Groups acked after that checkpoint were
trained on by the lost weights and are not replayed (at-most-once after ack, the broker's rule).

At start it also evaluates the scripted baselines (random and the naive-Bayes clinician) in process
on the spec's cases, rules and Patient / Examiner / Judge, for the learning-curve plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from actors.lm import PolicyConfig
from engine.client import HubClient, connect
from engine.logs import configure_logging
from engine.security import CurveKeys
from engine.weights import WeightServer, pack
from protocols import Ack, Groups, Pull, Shutdown, Trajectory, WeightsAvailable
from trainers.batch import build_batch
from trainers.trainer import OptimConfig, Trainer

log = structlog.get_logger("trainers.learner")

__all__ = ["LearnerConfig", "learn", "main"]


class LearnerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policy: PolicyConfig = PolicyConfig()
    optim: OptimConfig = OptimConfig()
    steps: int = 0  # stop after this many steps in all (0: no limit)
    minutes: float = 0.0  # stop after this many minutes of training in all (0: no limit)
    checkpoint_every: int = 10
    # A lease outlives a step; a dead learner's groups come back when it expires, and until then
    # admission counts them, so a restarted learner can wait up to this long for its next batch.
    lease_s: float = 60.0
    poll_s: float = 2.0  # long-poll window per pull
    threads: int = 1  # torch threads for the step
    temperature: float = 1.0  # the agents' sampling temperature (the spec checks they agree)
    weights_bind: str = "tcp://127.0.0.1:*"
    aborted_reward: float = 0.0
    # GRPO's division by the group std; False is Dr. GRPO (only centred). In the embedded
    # default's runs the scaled version learned faster.
    scale_advantages: bool = True
    baselines: dict[str, str] = msgspec.field(
        default_factory=lambda: {
            "random": "actors.agent:RandomAgent",
            "heuristic": "actors.agent:HeuristicAgent",
        }
    )
    baseline_cases: int = 300
    stop_cluster: bool = True  # ask the head to shut the cluster down when training ends


class Learner:
    def __init__(
        self, config: LearnerConfig, groups_per_step: int, run_dir: Path, trainer: Trainer
    ) -> None:
        self.config = config
        self.groups_per_step = groups_per_step
        self.run_dir = run_dir
        self.trainer = trainer
        self.checkpoint = run_dir / "checkpoints" / "latest.pt"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.elapsed0 = 0.0  # training seconds before this process (resumed runs)
        self.t0 = time.monotonic()
        self.episodes = 0
        self.endpoint = ""

    @property
    def elapsed_s(self) -> float:
        return self.elapsed0 + time.monotonic() - self.t0

    def resume(self) -> bool:
        if not self.checkpoint.exists():
            return False
        extra = self.trainer.load(self.checkpoint)
        self.elapsed0 = float(extra.get("elapsed_s", 0.0))
        self.episodes = int(extra.get("episodes", 0))
        log.info("resumed", version=self.trainer.version, elapsed_s=self.elapsed0)
        return True

    def done(self) -> bool:
        c = self.config
        return bool(
            (c.steps and self.trainer.steps >= c.steps)
            or (c.minutes and self.elapsed_s >= c.minutes * 60)
        )

    async def pull(self, hub: HubClient) -> tuple[list[list[Trajectory]], list[str]]:
        """Lease groups until there are `groups_per_step` (or training time is up)."""
        groups: list[list[Trajectory]] = []
        leases: list[str] = []
        c = self.config
        while len(groups) < self.groups_per_step and not self.done():
            want = self.groups_per_step - len(groups)
            reply = await hub.request(
                "broker",
                Pull(max_groups=want, lease_s=c.lease_s, wait_s=c.poll_s),
                timeout=c.poll_s + 30.0,
            )
            if not isinstance(reply, Groups):
                raise RuntimeError(f"broker answered Pull with {type(reply).__name__}")
            if reply.groups:
                groups += reply.groups
                leases.append(reply.lease)
        return groups, leases

    async def announce(self, hub: HubClient, server: WeightServer) -> None:
        version = self.trainer.version
        manifest, blob = await trio.to_thread.run_sync(
            lambda: pack(version, self.trainer.weight_tensors())
        )
        server.publish(manifest, blob)
        await hub.request("head", WeightsAvailable(version, server.endpoint), timeout=30.0)

    def save(self) -> None:
        extra = {"elapsed_s": self.elapsed_s, "episodes": self.episodes}
        self.trainer.save(self.checkpoint, extra)

    def record(self, line: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def plot(self) -> None:
        from trainers.curves import plot_learning_curve

        try:
            plot_learning_curve(self.run_dir)
        except ImportError as exc:  # matplotlib is in the train extra; the run goes on without
            log.warning("no plot", error=str(exc))

    async def train(self, hub: HubClient, server: WeightServer) -> None:
        await self.announce(hub, server)
        c = self.config
        while not self.done():
            groups, leases = await self.pull(hub)
            if not groups:
                break
            batch = build_batch(groups, aborted_reward=c.aborted_reward, scale=c.scale_advantages)
            stats = batch.stats(self.trainer.version)
            step = await trio.to_thread.run_sync(self.trainer.step, batch)
            for lease in leases:
                await hub.request("broker", Ack(lease), timeout=30.0)
            self.episodes += batch.trajectories
            await self.announce(hub, server)
            line = {
                "step": self.trainer.steps,
                "version": self.trainer.version,
                "elapsed_s": round(self.elapsed_s, 3),
                "episodes": self.episodes,
                **{k: round(v, 6) for k, v in stats.items()},
                **{f"train_{k}": round(v, 6) for k, v in step.items()},
            }
            self.record(line)
            log.info("step", **line)
            if self.trainer.steps % c.checkpoint_every == 0:
                await self.persist()
        await self.persist()

    async def persist(self) -> None:
        """Checkpoint and redraw the curve off the trio thread: the weight server and the hub
        heartbeat keep running meanwhile."""
        await trio.to_thread.run_sync(self.save)
        await trio.to_thread.run_sync(self.plot)


async def evaluate_baselines(config: LearnerConfig, spec_path: Path, out: Path) -> None:
    """Accuracy and reward of the scripted baselines under the run's spec, once per run."""
    if out.exists() or not config.baselines:
        return
    from trainers.baselines import run_baselines

    results = await run_baselines(spec_path, config.baselines, config.baseline_cases)
    out.write_text(json.dumps(results, indent=1))
    log.info("baselines", **{k: v["accuracy"] for k, v in results.items()})


async def learn(
    hub_endpoint: str,
    config: LearnerConfig,
    groups_per_step: int,
    run_dir: Path,
    *,
    spec_path: Path | None = None,
    curve: CurveKeys | None = None,
) -> Learner:
    """Run the learner until its step or time budget is spent; returns it (for tests)."""
    trainer = await trio.to_thread.run_sync(
        lambda: Trainer(
            config.policy, config.optim, threads=config.threads, temperature=config.temperature
        )
    )
    learner = Learner(config, groups_per_step, run_dir, trainer)
    learner.resume()
    learner.t0 = time.monotonic()
    server = WeightServer(config.weights_bind, curve=curve)
    async with trio.open_nursery() as nursery:
        learner.endpoint = await nursery.start(server.run)
        async with connect(hub_endpoint, name=f"learner-{run_dir.name}", curve=curve) as hub:
            if spec_path is not None:
                nursery.start_soon(
                    evaluate_baselines, config, spec_path, run_dir / "baselines.json"
                )
            await learner.train(hub, server)
            log.info("training finished", steps=trainer.steps, version=trainer.version)
            if config.stop_cluster:
                await hub.request("head", Shutdown("training finished"), timeout=30.0)
        nursery.cancel_scope.cancel()
    return learner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.learner", description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--groups-per-step", type=int, required=True)
    parser.add_argument("--config", default="{}", help="LearnerConfig as JSON")
    parser.add_argument("--spec", default=None, help="the cluster spec as JSON (for baselines)")
    parser.add_argument("--curve-dir", default=None)
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args(argv)
    configure_logging(args.log_file, console_level="warning")
    try:
        config = msgspec.json.decode(args.config.encode(), type=LearnerConfig)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        sys.stderr.write(f"trainers.learner: bad --config: {exc}\n")
        return 2
    if args.groups_per_step < 1:
        sys.stderr.write("trainers.learner: --groups-per-step must be at least 1\n")
        return 2
    curve = CurveKeys(args.curve_dir) if args.curve_dir else None
    spec = Path(args.spec) if args.spec else None
    run_dir = Path(args.run_dir)
    trio.run(
        lambda: learn(args.hub, config, args.groups_per_step, run_dir, spec_path=spec, curve=curve)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
