"""The CPU GRPO learner process: pull groups, step, publish weights, repeat.

`python -m trainers.learner --hub ENDPOINT --run-dir DIR --groups-per-step N [--config JSON]
[--rank R --world W --dist HOST:PORT]` (the cluster starts it when the spec has a `[learner]`
table; `learner.learners = W` starts W ranks). The loop:

1. lease this rank's share of `groups_per_step` complete GRPO groups from the broker (a long poll:
   no spinning); with `filter_uniform_groups`, groups whose samples all scored the same are set
   aside (acked, counted in the metrics, not trained) and more are leased in their place;
2. agree with the other ranks on whether to go on (rank 0 decides the budget; any rank that got
   SIGTERM or SIGINT stops them all), build rows (one per generated turn, `trainers.batch`) and
   take one GRPO step in a worker thread, so the process keeps answering weight requests while
   torch computes; with several ranks the gradients are averaged (`trainers.distributed`);
3. ack the leases; rank 0 publishes the new version on the weight server (manifest + chunks,
   checksums) and tells the head (`WeightsAvailable`), which moves the staleness admission
   forward and forwards the notice to every agent worker, which fetch the version and swap it in;
4. rank 0 appends a line for the global batch to `metrics.jsonl`; every `checkpoint_every` steps
   it writes `checkpoints/latest.pt` (atomically) and redraws `learning_curve.png`.

SIGTERM or SIGINT (`engine.cluster down`, the supervisor at shutdown) ends the learner cleanly: a
pull in flight is abandoned (its leases, never acked, come back to the broker when they expire), a
step in flight is finished and recorded, then rank 0 writes the checkpoint and every rank exits 0.

Started in a run directory that holds a checkpoint, it resumes from it (version, optimiser, RNG
and elapsed time; rank 0 reads it and sends it to the other ranks), so a crashed learner restarted
by the supervisor and `engine.cluster up --resume` continue where the last checkpoint left off.
Groups acked after that checkpoint were trained on by the lost weights and are not replayed
(at-most-once after ack, the broker's rule). When one rank of several dies, the others' next
collective fails and they exit non-zero too; the supervisor restarts every rank, and they all
resume from the last checkpoint.

At start rank 0 also evaluates the scripted baselines (random and the naive-Bayes clinician) in
process under the spec's rules and Patient / Examiner / Judge, for the learning-curve plot. With
`heldout.cases` set, it evaluates the policy itself on those cases every `heldout.every_min`
minutes (`eval.jsonl`, `trainers.heldout`), and the baselines run on the same cases. With
`demos.agent` set, a fresh run first clones that scripted demonstrator's episodes
(`trainers.demos`): rank 0 trains, every rank takes its weights, and that is version 1; groups
the agents played meanwhile with the random policy are acked unused (`dropped_old`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio

from actors.lm import PolicyConfig
from engine.client import HubClient, HubUnreachable, RemoteError, RequestTimeout, connect
from engine.logs import configure_logging
from engine.security import CurveKeys
from engine.spec import ClusterSpec
from engine.weights import WeightServer, pack
from protocols import Ack, Case, Filtered, Groups, Pull, Shutdown, Trajectory, WeightsAvailable
from trainers.batch import TrainBatch, build_batch, has_signal, made_before
from trainers.demos import DemosConfig, clone, collect
from trainers.distributed import Group, Solo, parse_address
from trainers.heldout import HeldOut, HeldOutConfig
from trainers.trainer import OptimConfig, Trainer

log = structlog.get_logger("trainers.learner")

__all__ = ["LearnerConfig", "learn", "main"]


class LearnerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policy: PolicyConfig = PolicyConfig()
    optim: OptimConfig = OptimConfig()
    steps: int = 0  # stop after this many steps in all (0: no limit)
    minutes: float = 0.0  # stop after this many minutes of training in all (0: no limit)
    checkpoint_every: int = 10
    # Redraw learning_curve.png at most this often (and at the end): a matplotlib redraw costs
    # about a second of the learner's core, which every 10 steps was a sixth of its time.
    plot_every_s: float = 60.0
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
    # Divide by max(group std, this): with partial credit in the reward (the judge's
    # `icd10_chapter_partial`), a group whose samples differ only by it keeps small advantages.
    advantage_std_floor: float = 0.0
    # DAPO's dynamic sampling: a group whose samples all scored the same (all right or all wrong)
    # has zero advantage everywhere. It is acked and counted in the metrics but not trained on,
    # and the learner leases more groups until its step holds `groups_per_step` with signal, or
    # until `max_filtered_per_step` were filtered (then a certain policy still steps). Every
    # step then averages the same number of informative groups, instead of Adam turning a step
    # with one lucky group into a full-size update.
    filter_uniform_groups: bool = False
    max_filtered_per_step: int = 512
    baselines: dict[str, str] = msgspec.field(
        default_factory=lambda: {
            "random": "actors.agent:RandomAgent",
            "heuristic": "actors.agent:HeuristicAgent",
        }
    )
    baseline_cases: int = 300  # the first cases of the spec's set, when there is no held-out set
    heldout: HeldOutConfig = HeldOutConfig()
    # A cold start: clone a scripted demonstrator's episodes before the first GRPO step
    # (`trainers.demos`); off unless `demos.agent` names one.
    demos: DemosConfig = DemosConfig()
    stop_cluster: bool = True  # ask the head to shut the cluster down when training ends
    # Data-parallel ranks wait for each other in collectives; one rank may wait out a long pull
    # (a restarted learner waits up to `lease_s` for its groups), so this exceeds `lease_s`.
    dist_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_filtered_per_step < 0:
            raise ValueError("LearnerConfig.max_filtered_per_step must be >= 0")
        if self.temperature <= 0:
            raise ValueError(
                "LearnerConfig.temperature must be > 0: GRPO needs the distribution the agents "
                "sampled from (greedy decoding is for evaluation)"
            )


class Learner:
    def __init__(
        self,
        config: LearnerConfig,
        groups_per_step: int,
        run_dir: Path,
        trainer: Trainer,
        group: Group | Solo | None = None,
    ) -> None:
        self.config = config
        self.group = group or Solo()
        if groups_per_step % self.group.world:
            raise ValueError(
                f"groups_per_step {groups_per_step} is not divisible by {self.group.world} ranks"
            )
        self.groups_per_step = groups_per_step
        self.share = groups_per_step // self.group.world  # this rank's groups per step
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.trainer = trainer
        self.checkpoint = run_dir / "checkpoints" / "latest.pt"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.elapsed0 = 0.0  # training seconds before this process (resumed runs)
        self.t0 = time.monotonic()
        self.episodes = 0
        self.plotted = time.monotonic()  # when learning_curve.png was last drawn
        self.endpoint = ""
        self.stop_requested = False  # a signal asked this process to stop
        self._pulling: trio.CancelScope | None = None
        self.heldout: HeldOut | None = None  # rank 0's evaluator on the held-out cases
        # The oldest policy version whose rollouts are trained on: after a cold start, the
        # clone's. Episodes the agents played with the random policy meanwhile (admission lets
        # `(max_staleness + 1) * batch` start at version 0) are acked unused, not trained.
        self.floor = 0
        self.dropped = 0  # trajectories dropped under the floor during this step's leasing

    @property
    def lead(self) -> bool:
        """Rank 0: the one that serves weights, records metrics and writes checkpoints."""
        return self.group.rank == 0

    @property
    def elapsed_s(self) -> float:
        return self.elapsed0 + time.monotonic() - self.t0

    def resume(self) -> bool:
        """Rank 0 reads the checkpoint and every rank loads the same bytes (the ranks need not
        share a file system); then every rank holds rank 0's weights."""
        blob = self.checkpoint.read_bytes() if self.lead and self.checkpoint.exists() else None
        blob = self.group.broadcast(blob)
        extra: dict[str, Any] | None = None
        if blob is not None:
            if self.lead:
                extra = self.trainer.load(self.checkpoint)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "latest.pt"
                    path.write_bytes(blob)
                    extra = self.trainer.load(path)
        self.group.broadcast_parameters(self.trainer.model)
        if extra is None:
            return False
        self.elapsed0 = float(extra.get("elapsed_s", 0.0))
        self.episodes = int(extra.get("episodes", 0))
        self.floor = int(extra.get("floor", 0))
        log.info("resumed", version=self.trainer.version, elapsed_s=self.elapsed0)
        return True

    def done(self) -> bool:
        """The step or time budget is spent (the time only counts on rank 0, which decides)."""
        c = self.config
        return bool(
            (c.steps and self.trainer.steps >= c.steps)
            or (self.lead and c.minutes and self.elapsed_s >= c.minutes * 60)
        )

    def request_stop(self, why: str) -> None:
        """Stop at the next step boundary; a pull in flight is abandoned now."""
        log.info("stop requested", why=why, step=self.trainer.steps)
        self.stop_requested = True
        if self._pulling is not None:
            self._pulling.cancel()

    async def pull(
        self,
        hub: HubClient,
        groups: list[list[Trajectory]],
        leases: list[str],
        filtered: list[list[Trajectory]],
    ) -> None:
        """Lease groups into `groups` until there are `share` (or training is to stop).

        With `filter_uniform_groups` it leases one group at a time, and a group without signal
        goes to `filtered` and is acked at once, and the head told (`Filtered`): admission counts
        what the learner has not consumed, and a whole step's worth of filtered groups held
        until the step would leave it no room for the groups the step still needs."""
        c = self.config
        while len(groups) < self.share and not (self.stop_requested or self.done()):
            want = 1 if c.filter_uniform_groups else self.share - len(groups)
            reply = await hub.request(
                "broker",
                Pull(max_groups=want, lease_s=c.lease_s, wait_s=c.poll_s),
                timeout=c.poll_s + 30.0,
            )
            if not isinstance(reply, Groups):
                raise RuntimeError(f"broker answered Pull with {type(reply).__name__}")
            if not reply.groups:
                continue
            if self.floor:
                reply = await self.drop_old(hub, reply)
                if reply is None:
                    continue
            if (
                c.filter_uniform_groups
                and len(filtered) < c.max_filtered_per_step
                and not any(has_signal(g, c.aborted_reward) for g in reply.groups)
            ):
                filtered += reply.groups
                await self.ack(hub, reply.lease)
                count = sum(len(g) for g in reply.groups)
                await hub.request("head", Filtered(count), timeout=30.0)
                continue
            groups += reply.groups
            leases.append(reply.lease)

    async def drop_old(self, hub: HubClient, reply: Groups) -> Groups | None:
        """Take out the groups made before `floor` and tell the head at once, so admission frees
        their slots; a lease left with no group is acked now (else after the step, as usual)."""
        keep = [g for g in reply.groups if not made_before(g, self.floor)]
        count = sum(len(g) for g in reply.groups) - sum(len(g) for g in keep)
        if not count:
            return reply
        self.dropped += count
        log.info("dropped rollouts older than the floor", trajectories=count, floor=self.floor)
        await hub.request("head", Filtered(count), timeout=30.0)
        if keep:
            return msgspec.structs.replace(reply, groups=keep)
        await self.ack(hub, reply.lease)
        return None

    async def ack(self, hub: HubClient, lease: str) -> None:
        """Ack a trained lease. While stopping, a broker that does not answer soon must not
        cost the checkpoint: the groups come back when the lease expires (trained twice)."""
        if not self.stop_requested:
            await hub.request("broker", Ack(lease), timeout=30.0)
            return
        try:
            await hub.request("broker", Ack(lease), timeout=5.0)
        except (RequestTimeout, HubUnreachable, RemoteError) as exc:
            log.warning("ack failed while stopping", lease=lease, error=str(exc))

    async def announce(self, hub: HubClient, server: WeightServer) -> None:
        version = self.trainer.version
        manifest, blob = await trio.to_thread.run_sync(
            lambda: pack(version, self.trainer.weight_tensors())
        )
        server.publish(manifest, blob)
        await hub.request("head", WeightsAvailable(version, server.endpoint), timeout=30.0)

    def save(self) -> None:
        extra = {"elapsed_s": self.elapsed_s, "episodes": self.episodes, "floor": self.floor}
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

    async def evaluate(self, *, final: bool = False) -> None:
        """The current weights on the held-out cases, when due (or at the end, unless this
        version was just evaluated). Not once a signal asked to stop: that is a shutdown."""
        h = self.heldout
        if h is None or self.stop_requested:
            return
        if final and h.version == self.trainer.version:
            return
        if final or h.due(self.elapsed_s):
            await h.run(
                self.trainer.model,
                step=self.trainer.steps,
                version=self.trainer.version,
                elapsed_s=self.elapsed_s,
            )

    async def cold_start(self, spec: ClusterSpec | None) -> None:
        """Clone the demonstrator (`config.demos`) into a fresh policy: rank 0 collects and
        trains, every rank then takes its weights, and the result is version 1 (checkpointed, so
        a resumed run does not clone again). The held-out evaluation runs before and after."""
        demos = self.config.demos
        if not demos.enabled or self.trainer.version > 0:
            return
        if spec is None:
            log.warning("no spec: no demonstrations to clone")
            return
        if self.lead:
            await self.evaluate()
            rows = await collect(demos, spec, self.trainer.policy)
            if self.config.minutes:  # the clone is counted in the budget: it cannot outlast it
                left = self.config.minutes - self.elapsed_s / 60
                minutes = max(min(demos.minutes, left), 1e-6)  # at least one update
                demos = msgspec.structs.replace(demos, minutes=minutes)
            stats = await trio.to_thread.run_sync(
                lambda: clone(
                    self.trainer.policy,
                    rows,
                    demos,
                    temperature=self.trainer.temperature,
                    should_stop=lambda: self.stop_requested,
                )
            )
            if not stats["stopped"]:
                (self.run_dir / "demos.json").write_text(
                    json.dumps({"agent": demos.agent, **stats, "elapsed_s": self.elapsed_s})
                )
        await trio.to_thread.run_sync(self.group.broadcast_parameters, self.trainer.model)
        if self.stop_requested:
            # Stopped mid-clone (`down`, a signal): the weights stay version 0, so a resumed run
            # clones again, from them.
            log.info("cold start stopped before its end: a resumed run clones again")
            return
        self.trainer.version += 1
        self.floor = self.trainer.version
        if self.lead:
            if self.heldout is not None:
                self.heldout.last_s = -math.inf  # due now: the cloned policy's level
            await self.evaluate()
            await self.persist(plot=False)

    async def train(self, hub: HubClient, server: WeightServer | None) -> None:
        if server is not None:
            await self.announce(hub, server)
        c = self.config
        while True:
            await self.evaluate()
            groups: list[list[Trajectory]] = []
            filtered: list[list[Trajectory]] = []
            leases: list[str] = []
            with trio.CancelScope() as self._pulling:
                await self.pull(hub, groups, leases, filtered)
            self._pulling = None
            # Every rank takes part, so none is left alone in the step's all-reduce; a rank
            # that stops here leaves its leases unacked, and the broker hands them out again.
            if await trio.to_thread.run_sync(self.group.any, self.stop_requested or self.done()):
                break
            batch = build_batch(
                groups,
                aborted_reward=c.aborted_reward,
                scale=c.scale_advantages,
                std_floor=c.advantage_std_floor,
            )
            if filtered:  # their episodes count in the metrics (accuracy above all)
                batch.merge(build_batch(filtered, aborted_reward=c.aborted_reward), trained=False)
            batch.dropped, self.dropped = self.dropped, 0
            version = self.trainer.version
            step = await trio.to_thread.run_sync(self.trainer.step, batch)
            parts = await trio.to_thread.run_sync(
                self.group.gather, (dataclasses.replace(batch, rows=[]), len(batch.rows), step)
            )
            for lease in leases:
                await self.ack(hub, lease)
            stats, step = merge_stats(parts, version)
            self.episodes += int(stats["trajectories"])
            if not self.lead:
                continue
            if server is not None and not self.stop_requested:
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
            if self.trainer.steps % c.checkpoint_every == 0 and not self.stop_requested:
                await self.persist(plot=time.monotonic() - self.plotted >= c.plot_every_s)
        if self.lead:
            await self.evaluate(final=True)
            await self.persist(plot=True)

    async def persist(self, *, plot: bool) -> None:
        """Checkpoint (and redraw the curve) off the trio thread: the weight server and the hub
        heartbeat keep running meanwhile."""
        await trio.to_thread.run_sync(self.save)
        if plot:
            await trio.to_thread.run_sync(self.plot)
            self.plotted = time.monotonic()

    def weights_digest(self) -> str:
        """sha256 of the weights: equal on every rank of a data-parallel learner."""
        h = hashlib.sha256()
        for name, dtype, shape, data in self.trainer.weight_tensors():
            h.update(f"{name}:{dtype}:{shape}".encode())
            h.update(data)
        return h.hexdigest()


_SUMMED = ("rows", "rows_trained", "tokens")


def merge_stats(
    parts: list[tuple[TrainBatch, int, dict[str, float]]], version: int
) -> tuple[dict[str, float], dict[str, float]]:
    """The global batch's statistics and step metrics from every rank's share: episode means
    over all trajectories, counts summed, the ranks' losses averaged (the gradient was)."""
    whole = TrainBatch(rows=[], trajectories=0, groups=0)
    for batch, _, _ in parts:
        whole.merge(batch)
    stats = whole.stats(version)
    stats["rows"] = float(sum(rows for _, rows, _ in parts))
    steps = [s for _, _, s in parts]
    step: dict[str, float] = {}
    for key in steps[0]:
        values = [s.get(key, 0.0) for s in steps]
        if key in _SUMMED:
            step[key] = sum(values)
        elif key == "step_s":
            step[key] = max(values)
        else:
            step[key] = sum(values) / len(values)
    return stats, step


async def evaluate_baselines(
    config: LearnerConfig, spec_path: Path, out: Path, cases: list[Case] | None = None
) -> None:
    """Accuracy and reward of the scripted baselines under the run's spec, once per run; with a
    cold start, its demonstrator too (the level the clone aims at), unless a baseline is it."""
    agents, configs = dict(config.baselines), {}
    demos = config.demos
    if demos.enabled and (demos.agent_config or demos.agent not in agents.values()):
        agents["demonstrator"] = demos.agent
        configs["demonstrator"] = demos.agent_config
    if out.exists() or not agents:
        return
    from trainers.baselines import run_baselines

    results = await run_baselines(spec_path, agents, config.baseline_cases, cases, configs)
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
    rank: int = 0,
    world: int = 1,
    dist: str = "",
    handle_signals: bool = True,
) -> Learner:
    """Run the learner (one rank of `world`, joined at the rendezvous `dist`) until its step or
    time budget is spent or a signal stops it; returns it (for tests). `handle_signals` needs
    the main thread."""
    async with trio.open_nursery() as nursery:
        learner_box: list[Learner] = []
        pending: list[str] = []  # signals that came before the learner existed
        if handle_signals:
            await nursery.start(learner_watch, learner_box, pending)
        group: Group | Solo = Solo()
        if world > 1:
            group = await trio.to_thread.run_sync(
                lambda: Group(rank, world, dist, timeout_s=config.dist_timeout_s)
            )
        try:
            trainer = await trio.to_thread.run_sync(
                lambda: Trainer(
                    config.policy,
                    config.optim,
                    threads=config.threads,
                    temperature=config.temperature,
                    grad_hook=group.grad_hook,
                )
            )
            learner = Learner(config, groups_per_step, run_dir, trainer, group)
            learner_box.append(learner)
            for why in pending:
                learner.request_stop(why)
            await trio.to_thread.run_sync(learner.resume)
            learner.t0 = time.monotonic()
            await run_rank(learner, hub_endpoint, nursery, spec_path=spec_path, curve=curve)
            log.info(
                "training finished",
                rank=group.rank,
                steps=trainer.steps,
                version=trainer.version,
                stopped_by_signal=learner.stop_requested,
                weights_sha256=learner.weights_digest(),
            )
        finally:
            group.close()
        nursery.cancel_scope.cancel()
    return learner


async def learner_watch(
    box: list[Learner], pending: list[str], *, task_status: trio.TaskStatus[None]
) -> None:
    """SIGTERM and SIGINT ask the learner to stop at its next step boundary."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            why = signal.Signals(signum).name
            if box:
                box[0].request_stop(why)
            else:
                pending.append(why)


async def run_rank(
    learner: Learner,
    hub_endpoint: str,
    nursery: trio.Nursery,
    *,
    spec_path: Path | None,
    curve: CurveKeys | None,
) -> None:
    config = learner.config
    name = f"learner-{learner.run_dir.name}"
    if not learner.lead:
        name += f"-rank{learner.group.rank}"
    async with connect(hub_endpoint, name=name, curve=curve) as hub:
        spec = msgspec.json.decode(spec_path.read_bytes(), type=ClusterSpec) if spec_path else None
        if not learner.lead:
            await learner.cold_start(spec)
            await learner.train(hub, None)
            return
        server = WeightServer(config.weights_bind, curve=curve)
        if config.heldout.enabled and spec is not None:
            learner.heldout = HeldOut(
                config.heldout,
                spec,
                config.policy,
                config.temperature,
                learner.run_dir / "eval.jsonl",
                threads=config.threads,
            )
            await learner.heldout.start()
        elif config.heldout.enabled:
            log.warning("no spec: the held-out evaluation is off")
        try:
            async with trio.open_nursery() as serving:
                learner.endpoint = await serving.start(server.run)
                if spec_path is not None:
                    nursery.start_soon(
                        evaluate_baselines,
                        config,
                        spec_path,
                        learner.run_dir / "baselines.json",
                        learner.heldout.cases if learner.heldout else None,
                    )
                await learner.cold_start(spec)
                await learner.train(hub, server)
                if config.stop_cluster and not learner.stop_requested:
                    await hub.request("head", Shutdown("training finished"), timeout=30.0)
                serving.cancel_scope.cancel()
        finally:
            if learner.heldout is not None:
                await learner.heldout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.learner", description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument(
        "--groups-per-step", type=int, required=True, help="groups per step, all ranks together"
    )
    parser.add_argument("--config", default="{}", help="LearnerConfig as JSON")
    parser.add_argument("--spec", default=None, help="the cluster spec as JSON (for baselines)")
    parser.add_argument("--curve-dir", default=None)
    parser.add_argument("--log-file", default=None)
    parser.add_argument("--rank", type=int, default=0, help="this process's data-parallel rank")
    parser.add_argument("--world", type=int, default=1, help="data-parallel ranks in all")
    parser.add_argument("--dist", default="", help="HOST:PORT rank 0 binds for the rendezvous")
    args = parser.parse_args(argv)
    configure_logging(args.log_file, console_level="warning")
    structlog.contextvars.bind_contextvars(rank=args.rank)

    def fail(why: str) -> int:
        sys.stderr.write(f"trainers.learner: {why}\n")
        return 2

    try:
        config = msgspec.json.decode(args.config.encode(), type=LearnerConfig)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return fail(f"bad --config: {exc}")
    if args.groups_per_step < 1:
        return fail("--groups-per-step must be at least 1")
    if args.world < 1 or not 0 <= args.rank < args.world:
        return fail(f"--rank {args.rank} --world {args.world}: need 0 <= rank < world")
    if args.groups_per_step % args.world:
        return fail(
            f"--groups-per-step {args.groups_per_step} is not divisible by --world {args.world}"
        )
    if args.world > 1:
        try:
            parse_address(args.dist)
        except ValueError as exc:
            return fail(f"--dist: {exc}")
    curve = CurveKeys(args.curve_dir) if args.curve_dir else None
    spec = Path(args.spec) if args.spec else None
    run_dir = Path(args.run_dir)
    trio.run(
        lambda: learn(
            args.hub,
            config,
            args.groups_per_step,
            run_dir,
            spec_path=spec,
            curve=curve,
            rank=args.rank,
            world=args.world,
            dist=args.dist,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
