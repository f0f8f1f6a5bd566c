"""`python -m engine.cluster up|status|down|keys`: run dxsim on this machine or a set of nodes.

`up [SPEC.toml]` starts a head (hub, scheduler, broker and the `env` and `head` services in this
process) and worker processes for every service, runs the spec's episodes with a progress bar, and
writes a summary, JSON-line logs and trajectories under a new run directory. With no spec it runs
the embedded default (`engine/default.toml`). `status` and `down` find the running head through
`RUN_DIR/latest/head.json`; `keys DIR` writes CURVE key pairs.

With a `[learner]` table (the embedded default has one) the head also starts the learner process,
keeps the broker's log on disk (`RUN_DIR/broker`), admits episodes by AReaL's staleness rule, and
forwards each new weight version the learner announces to every worker. The run ends when the
learner has spent its budget; `up --resume` continues the latest run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
import trio
import zmq

from engine.actor import Actor, ActorError, ConfigError, convert_config, handles
from engine.admission import Admission
from engine.broker import Broker, BrokerConfig
from engine.client import HubUnreachable, RemoteError, RequestTimeout, SyncHubClient, local_client
from engine.env import EnvService
from engine.hub import Hub
from engine.logs import configure_logging, read_json_lines
from engine.routing import RouterConfig
from engine.scheduler import Scheduler
from engine.security import SecurityError, check_bind, write_keys
from engine.spec import ClusterSpec, Hosted, load_spec, worker_plan
from engine.supervisor import Supervisor, WorkerProcess, worker_argv
from engine.worker import resolve, serve
from protocols import (
    Acked,
    BrokerStats,
    BrokerStatsQuery,
    Case,
    ErrorCode,
    Filtered,
    Shutdown,
    Status,
    StatusQuery,
    Trajectory,
    VersionApplied,
    WeightsAvailable,
)

log = structlog.get_logger("engine.cluster")


class HeadInfo(msgspec.Struct):
    """What `status` and `down` need to find a running head."""

    endpoint: str
    pid: int
    run_dir: str
    started: float
    spec: str


class HeadControl(Actor):
    """Service `head`: cluster-wide status and a polite `down`."""

    service = "head"

    def __init__(self, head: Head) -> None:
        super().__init__(None)
        self.head = head

    @handles(StatusQuery)
    def status(self, msg: StatusQuery) -> Status:
        return self.head.status()

    @handles(Shutdown)
    def shutdown(self, msg: Shutdown) -> Status:
        log.info("down requested", reason=msg.reason)
        self.head.request_down()
        return self.head.status()

    @handles(Filtered)
    def filtered(self, msg: Filtered) -> Acked:
        """A learner acked trajectories it did not train on: admission frees their slots."""
        if msg.trajectories < 0:
            raise ActorError(ErrorCode.BAD_REQUEST, "Filtered.trajectories must be >= 0")
        if self.head.admission is not None:
            self.head.admission.discard(msg.trajectories)
        return Acked(msg.trajectories)

    @handles(WeightsAvailable)
    def weights(self, msg: WeightsAvailable) -> VersionApplied:
        """The learner published a version: admit by it, and tell every worker."""
        self.head.new_version(msg)
        return VersionApplied("head", msg.version)


@dataclass
class Head:
    spec: ClusterSpec
    run_dir: Path
    hub: Hub
    scheduler: Scheduler | None = None
    broker: Broker | None = None
    down: trio.Event | None = None
    admission: Admission | None = None
    learner_version: int = -1  # -1: no learner has announced a version yet
    learner_endpoint: str = ""  # the announcing learner's weight server: changes on a restart
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=256))
    aborted: bool = False  # a second signal: stopped at once, no summary

    def new_version(self, msg: WeightsAvailable) -> None:
        restarted = msg.endpoint != self.learner_endpoint  # a new learner process (its server)
        if self.admission is not None and (restarted or msg.version > self.admission.version):
            # Admission counts from the learner's version and what the broker still holds, not
            # from its own tally: a learner restarted from an older checkpoint lost steps, and a
            # learner that filters groups (dynamic sampling) consumes more than a batch a step;
            # either way the rule stays exact. (The learner acks a step's groups before it
            # announces the version they made.)
            assert self.broker is not None  # run_cluster sets both
            self.admission.rebase(msg.version, self.broker.core.pending)
        self.learner_version = msg.version if restarted else max(self.learner_version, msg.version)
        self.learner_endpoint = msg.endpoint
        self.end_warmup()
        self.hub.broadcast_weights(msg)
        log.info("weights version", version=msg.version, endpoint=msg.endpoint)

    def end_warmup(self) -> None:
        """Episodes start with the spec's rules from the warm-up's last version on."""
        warmup = self.spec.scheduler.warmup
        scheduler = self.scheduler
        if scheduler is None or scheduler.rules == self.spec.rules:
            return
        if self.learner_version >= warmup.versions:
            scheduler.rules = self.spec.rules
            turns = scheduler.rules.max_turns
            log.info("warm-up over", version=self.learner_version, max_turns=turns)

    def finished(self, t: Trajectory) -> None:
        self.recent.append(bool(t.verdict and t.verdict.correct))

    def progress_extra(self) -> str:
        if self.spec.learner is not None and self.learner_version < 0:
            # no version announced yet: the learner is starting, or in a cold start (the learner
            # config's `demos`), playing and cloning its demonstrator for minutes
            demos = self.spec.learner.config.get("demos") or {}
            return "  learner: cold start" if demos.get("agent") else "  learner: starting"
        if self.learner_version < 0 or not self.recent:
            return ""
        recent = sum(self.recent) / len(self.recent)
        return f"  policy v{self.learner_version}  acc(last {len(self.recent)}) {recent:.3f}"

    def status(self) -> Status:
        router = self.hub.router
        status = router.status(trio.current_time())
        counters = dict(status.counters)
        if self.scheduler is not None:
            counters.update({f"episodes.{k}": v for k, v in self.scheduler.tally.summary().items()})
            counters["episodes.running"] = self.scheduler.tally.running
        if self.broker is not None:
            counters["broker.received"] = self.broker.received
            counters["broker.duplicates"] = self.broker.duplicates
        if self.admission is not None:
            counters.update({f"admission.{k}": v for k, v in self.admission.stats().items()})
        return msgspec.structs.replace(status, counters=counters)

    def request_down(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.down is not None:
            self.down.set()


def load_cases(spec: ClusterSpec) -> list[Case]:
    factory = resolve(spec.scheduler.cases)
    try:
        cases = list(factory(**spec.scheduler.cases_args))
    except TypeError as exc:
        raise ConfigError(
            f"scheduler.cases_args do not fit {spec.scheduler.cases}: {exc}"
        ) from None
    if not cases:
        raise ConfigError(f"{spec.scheduler.cases} returned no cases")
    bad = [type(c).__name__ for c in cases[:5] if not isinstance(c, Case)]
    if bad:
        raise ConfigError(
            f"{spec.scheduler.cases} must return protocols.Case objects, not {bad[0]}"
        )
    return cases


def check_services(spec: ClusterSpec) -> None:
    """Every actor imports and its configuration fits, before any process starts."""
    for name, service in spec.services.items():
        cls = resolve(service.actor)
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise ConfigError(
                f"services.{name}.actor {service.actor!r} is not an engine.actor.Actor"
            )
        if cls.Config is not None:
            convert_config(cls.Config, service.config, f"services.{name}.config")
        elif service.config:
            raise ConfigError(f"services.{name}: {cls.__name__} takes no config")


def new_run_dir(base: str) -> Path:
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = root / stamp
    n = 1
    while run.exists():
        n += 1
        run = root / f"{stamp}-{n}"
    run.mkdir()
    (run / "workers").mkdir()
    latest = root / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run.name)
    return run


def latest_run_dir(base: str) -> Path:
    """The run `RUN_DIR/latest` points to, for `up --resume`."""
    latest = Path(base) / "latest"
    if not latest.exists():
        raise ConfigError(f"nothing to resume: {latest} does not exist")
    run = latest.resolve()
    (run / "workers").mkdir(exist_ok=True)
    return run


def learner_argv(
    python_exe: str, hub: str, spec: ClusterSpec, run_dir: Path, rank: int = 0, dist: str = ""
) -> list[str]:
    """Learner rank `rank`'s command line (ranks join at `dist`, HOST:PORT, when the spec has
    several); it resumes by itself from a checkpoint in `run_dir`."""
    learner = spec.learner
    assert learner is not None
    log_file = "learner.jsonl" if rank == 0 else f"learner-{rank}.jsonl"
    argv = [
        python_exe,
        "-m",
        learner.module,
        "--hub",
        hub,
        "--run-dir",
        str(run_dir),
        "--groups-per-step",
        str(learner.groups_per_step),
        "--config",
        msgspec.json.encode(learner.config).decode(),
        "--spec",
        str(run_dir / "spec.json"),
        "--log-file",
        str(run_dir / log_file),
    ]
    if learner.learners > 1:
        argv += ["--rank", str(rank), "--world", str(learner.learners), "--dist", dist]
    if spec.head.curve is not None:
        argv += ["--curve-dir", spec.head.curve.dir]
    return argv


def rendezvous_address(address: str) -> str:
    """`HOST:PORT` for the learner ranks; port 0 becomes a port that is free now (the ranks bind
    it moments later, and again after a restart)."""
    host, _, port = address.rpartition(":")
    if int(port):
        return address
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


def start_learners(
    supervisor: Supervisor, python_exe: str, hub: str, spec: ClusterSpec, run_dir: Path
) -> list[WorkerProcess]:
    """The learner's ranks as supervised processes (`learner`, `learner-1`, ...).

    A rank that dies is restarted like any worker; the other ranks' next collective then fails,
    so they exit non-zero and are restarted too, and every rank resumes from the last checkpoint.
    """
    assert spec.learner is not None
    dist = rendezvous_address(spec.learner.rendezvous) if spec.learner.learners > 1 else ""
    return [
        supervisor.add(
            "learner" if rank == 0 else f"learner-{rank}",
            learner_argv(python_exe, hub, spec, run_dir, rank, dist),
        )
        for rank in range(spec.learner.learners)
    ]


class Interrupted(Exception):
    """`up` was stopped at once by a second signal: learners and workers were stopped, but no
    summary was written."""


async def watch_signals(
    head: Head, run: trio.CancelScope, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGTERM (`kill`, a container stop) or Ctrl-C stops the run as `engine.cluster down` does:
    no new episodes, running ones finish, the learners write their checkpoint, the summary is
    written. A second signal cancels `run` at once (the clean-up of any error still runs:
    learners first, then the workers)."""
    assert head.down is not None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if head.down.is_set():
                log.warning("second signal: stopping now", signal=name)
                head.aborted = True
                run.cancel()
                return
            log.warning("signal: stopping as `down` would", signal=name)
            sys.stderr.write(f"dxsim: {name}: stopping (again to stop at once)\n")
            head.request_down()


async def stop_learners(
    supervisor: Supervisor, learners: list[WorkerProcess], grace_s: float = 30.0
) -> None:
    """SIGTERM the learner's ranks and wait for them while the hub and broker still serve: a
    rank finishes its step, acks its leases, and rank 0 writes the checkpoint. Only then do the
    workers (the broker among them) get their `Shutdown`."""
    supervisor.stopping = True  # a rank that exits from now on is not restarted
    live = [w.process for w in learners if w.process is not None and w.process.returncode is None]
    for p in live:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    with trio.move_on_after(grace_s):
        for p in live:
            await p.wait()


class Progress:
    """One line on stderr, redrawn in place on a terminal, every few seconds otherwise."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, summary: dict[str, float], final: bool = False, extra: str = "") -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        done = int(summary["episodes"])
        if self.total:
            filled = int(30 * done / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}"
        else:
            bar = f"{done} episodes"
        line = (
            f"{bar}  {summary['episodes_per_s']:.1f} ep/s  acc {summary['accuracy']:.3f}"
            f"  f1 {summary['exam_f1']:.3f}  aborted {int(summary['aborted'])}{extra}"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


async def run_cluster(
    spec: ClusterSpec,
    *,
    spec_name: str = "default",
    ready_timeout_s: float = 180.0,  # an agent starting on a loaded 2-core machine took 90 s
    resume: bool = False,
) -> dict[str, Any]:
    """`up`: run the spec to completion (or until `down`); returns the summary.

    `resume`: continue the latest run under `spec.run_dir` (its broker log and checkpoint)."""
    check_bind(spec.head.bind, spec.head.curve)
    check_services(spec)
    cases = load_cases(spec)
    run_dir = latest_run_dir(spec.run_dir) if resume else new_run_dir(spec.run_dir)
    configure_logging(run_dir / "head.jsonl", console_level="warning")
    structlog.contextvars.bind_contextvars(cluster=spec.name)
    ctx = zmq.Context.instance()
    inproc = f"inproc://dxsim-hub-{os.getpid()}"
    hub = Hub(
        [spec.head.bind, inproc],
        ctx=ctx,
        config=RouterConfig(heartbeat_s=spec.head.heartbeat_s, name=spec.name),
        curve=spec.head.curve,
    )
    head = Head(spec, run_dir, hub, down=trio.Event())
    supervisor = Supervisor(run_dir / "workers")
    curve = spec.head.curve
    summary: dict[str, Any] = {}
    learners: list[WorkerProcess] = []
    async with trio.open_nursery() as nursery:
        work = trio.CancelScope()  # what a second signal cancels: not the hub, not the clean-up
        await nursery.start(watch_signals, head, work)
        endpoints = await nursery.start(hub.run)
        tcp = endpoints[0]
        info = HeadInfo(tcp, os.getpid(), str(run_dir), time.time(), spec_name)
        (run_dir / "head.json").write_bytes(msgspec.json.encode(info))
        (run_dir / "spec.json").write_bytes(msgspec.json.format(msgspec.json.encode(spec)))
        try:
            with work:
                await nursery.start(supervisor.run)
                python = spec.head.python or sys.executable
                for wname, services in worker_plan(spec).items():
                    hosted = [
                        Hosted(s.actor, s.config, s.capacity, f"{wname}.{n}" if i else wname)
                        for i, (n, s) in enumerate(services)
                    ]
                    argv = worker_argv(
                        python,
                        tcp,
                        hosted,
                        spec.head.heartbeat_s,
                        run_dir / "workers" / f"{wname}.jsonl",
                        curve.dir if curve else None,
                    )
                    supervisor.add(wname, argv)
                client = local_client(hub, nursery, "scheduler")
                broker_config = BrokerConfig(jsonl=str(run_dir / "trajectories.jsonl"))
                if spec.learner is not None:
                    batch = spec.learner.groups_per_step * spec.scheduler.group_size
                    head.admission = Admission(batch, spec.learner.max_staleness)
                    held = 4 * (spec.learner.max_staleness + 2) * batch
                    broker_config = msgspec.structs.replace(
                        broker_config,
                        log_dir=str(run_dir / "broker"),
                        max_pending=max(
                            broker_config.max_pending, held + spec.scheduler.concurrency
                        ),
                    )
                warmup = spec.scheduler.warmup
                rules = spec.rules
                if warmup.versions and spec.learner is not None:
                    rules = msgspec.structs.replace(rules, max_turns=warmup.max_turns)
                scheduler = Scheduler(
                    client,
                    cases,
                    rules,
                    concurrency=spec.scheduler.concurrency,
                    group_size=spec.scheduler.group_size,
                    seed=spec.scheduler.seed,
                    admit=head.admission.admit if head.admission else None,
                    release=head.admission.finished if head.admission else None,
                )
                head.scheduler = scheduler
                head.end_warmup()  # a resumed run may be past it
                head.broker = Broker(broker_config)
                env = EnvService(scheduler, nursery)
                for actor, capacity in ((head.broker, 4096), (env, 4096), (HeadControl(head), 16)):
                    await nursery.start(
                        lambda a=actor, c=capacity, **kw: serve(
                            a,
                            inproc,
                            name=f"{a.service}-head",
                            capacity=c,
                            ctx=ctx,
                            curve=curve,
                            heartbeat_s=spec.head.heartbeat_s,
                            **kw,
                        )
                    )
                await wait_for_services(hub, spec, supervisor, ready_timeout_s)
                if head.admission is not None:
                    head.admission.add_accepted(head.broker.core.pending)  # replayed on --resume
                if spec.learner is not None:
                    learners = start_learners(supervisor, python, tcp, spec, run_dir)
                log.info("cluster ready", endpoint=tcp, run_dir=str(run_dir))
                sys.stderr.write(f"dxsim: hub at {tcp}, run directory {run_dir}\n")
                summary = await drive(head, scheduler)
        finally:
            (run_dir / "head.json").unlink(missing_ok=True)  # `status` now says: not running
            with trio.CancelScope(shield=True):
                # a second signal means now: a learner busy starting up gets seconds, not 30
                await stop_learners(supervisor, learners, grace_s=2.0 if head.aborted else 30.0)
                hub.shutdown_workers("cluster down")
                await supervisor.stop()
                nursery.cancel_scope.cancel()
    if head.aborted:
        raise Interrupted(f"stopped at once by a second signal; run directory {run_dir}")
    summary["run_dir"] = str(run_dir)
    if spec.learner is not None:
        summary["learning"] = learning_summary(run_dir)
    summary["reveal_diagnosis"] = spec.rules.reveal_diagnosis  # did the world model see it
    (run_dir / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
    return summary


async def wait_for_services(
    hub: Hub, spec: ClusterSpec, supervisor: Supervisor, timeout_s: float
) -> None:
    """Every service has a live worker, or a clear error naming the ones that never came."""
    needed = set(spec.services)
    with trio.move_on_after(timeout_s):
        while not needed <= set(hub.router.services()):
            dead = [
                w for w in supervisor.workers if w.exits and w.restarts >= supervisor.max_restarts
            ]
            if dead:
                break
            await trio.sleep(0.05)
        else:
            return
    missing = sorted(needed - set(hub.router.services()))
    detail = ""
    for w in supervisor.workers:
        if w.name.rsplit("-", 1)[0] in missing and w.exits:
            detail += f"\n--- {w.name} exited {w.exits[-1]}:\n{w.stderr_tail()}"
    raise RuntimeError(
        f"services never became ready within {timeout_s:g} s: {', '.join(missing)}{detail}"
    )


async def drive(head: Head, scheduler: Scheduler) -> dict[str, Any]:
    spec = head.spec
    episodes = spec.scheduler.episodes or None
    progress = Progress(episodes)
    assert head.down is not None
    scheduler.tally.t0 = time.monotonic()  # episodes/s counts episodes, not worker start-up

    async with trio.open_nursery() as nursery:

        async def show() -> None:
            while True:
                progress.show(scheduler.tally.summary(), extra=head.progress_extra())
                await trio.sleep(0.25)

        async def watch_down() -> None:
            await head.down.wait()
            scheduler.stop()

        nursery.start_soon(show)
        nursery.start_soon(watch_down)
        await scheduler.run(episodes, on_finish=head.finished)
        nursery.cancel_scope.cancel()
    summary: dict[str, Any] = dict(scheduler.tally.summary())
    progress.show(summary, final=True, extra=head.progress_extra())
    if head.learner_version >= 0:
        summary["policy_version"] = head.learner_version
        summary["recent_accuracy"] = sum(head.recent) / max(len(head.recent), 1)
    broker = head.broker
    if broker is not None:
        summary["broker_received"] = broker.received
        summary["broker_duplicates"] = broker.duplicates
    summary["hub_retried"] = head.hub.router.retried
    summary["dead_workers"] = head.hub.router.dead_workers
    return summary


def learning_summary(run_dir: Path) -> dict[str, Any]:
    """Start and end of the learner's curve: means over its first and last tenth of the steps
    (10 to 50 steps each; one step's 64 episodes are too few to read alone), and the first and
    last held-out evaluations (`eval.jsonl`), when the learner made them."""
    rows = read_json_lines(run_dir / "metrics.jsonl")
    if not rows:
        return {}
    window = min(50, max(10, len(rows) // 10))
    first, last = rows[:window], rows[-window:]

    def mean(part: list[dict[str, Any]], key: str) -> float:
        return sum(float(r.get(key, 0.0)) for r in part) / len(part)

    out: dict[str, Any] = {
        "steps": rows[-1]["step"],
        "minutes": rows[-1]["elapsed_s"] / 60,
        "accuracy_start": mean(first, "accuracy"),
        "accuracy_end": mean(last, "accuracy"),
        "reward_start": mean(first, "reward"),
        "reward_end": mean(last, "reward"),
        "plot": str(run_dir / "learning_curve.png"),
    }
    evals = read_json_lines(run_dir / "eval.jsonl")
    if evals:
        out["heldout"] = {
            "n": evals[-1]["n"],
            "accuracy_start": evals[0]["accuracy"],
            "accuracy_end": evals[-1]["accuracy"],
            "accuracy_end_ci95": evals[-1]["ci95"]["accuracy"],
            "minutes_end": evals[-1]["elapsed_s"] / 60,
        }
        greedy = evals[-1].get("greedy")
        if greedy:
            out["heldout"]["greedy_accuracy_end"] = greedy["accuracy"]
            out["heldout"]["greedy_accuracy_end_ci95"] = greedy["ci95"]["accuracy"]
    baselines = run_dir / "baselines.json"
    if baselines.exists():
        out["baselines"] = {
            k: v["accuracy"] for k, v in msgspec.json.decode(baselines.read_bytes()).items()
        }
    return out


def format_summary(summary: dict[str, Any]) -> str:
    rows = [
        ("episodes", f"{summary['episodes']:.0f}"),
        (
            "  diagnosed / truncated / aborted",
            f"{summary['diagnosed']:.0f} / {summary['truncated']:.0f} / {summary['aborted']:.0f}",
        ),
        ("published to broker", f"{summary.get('broker_received', summary['published']):.0f}"),
        ("diagnosis accuracy", f"{summary['accuracy']:.3f}"),
        ("mean exam F1", f"{summary['exam_f1']:.3f}"),
        ("mean reward", f"{summary['reward']:.3f}"),
        ("mean cost", f"{summary['cost']:.1f}"),
        ("mean turns", f"{summary['turns']:.2f}"),
        ("episodes/s", f"{summary['episodes_per_s']:.1f}"),
    ]
    learning = summary.get("learning")
    if learning:
        rows += [
            ("policy version", f"{summary.get('policy_version', 0)}"),
            (
                "learner accuracy first -> last",
                f"{learning['accuracy_start']:.3f} -> {learning['accuracy_end']:.3f}"
                f" over {learning['minutes']:.1f} min ({learning['steps']} steps)",
            ),
            (
                "learner reward first -> last",
                f"{learning['reward_start']:.3f} -> {learning['reward_end']:.3f}",
            ),
        ]
        held = learning.get("heldout")
        if held:
            low, high = held["accuracy_end_ci95"]
            rows.append(
                (
                    f"held-out accuracy first -> last ({held['n']} cases)",
                    f"{held['accuracy_start']:.3f} -> {held['accuracy_end']:.3f}"
                    f" (95% CI {low:.3f}-{high:.3f}) at {held['minutes_end']:.1f} min",
                )
            )
            if "greedy_accuracy_end" in held:
                low, high = held["greedy_accuracy_end_ci95"]
                rows.append(
                    (
                        "  last, greedy decoding",
                        f"{held['greedy_accuracy_end']:.3f} (95% CI {low:.3f}-{high:.3f})",
                    )
                )
        for name, value in learning.get("baselines", {}).items():
            rows.append((f"{name} baseline accuracy", f"{value:.3f}"))
        rows.append(("learning curve", learning["plot"]))
    rows.append(("run directory", str(summary.get("run_dir", ""))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n"


# --- status / down ----------------------------------------------------------------------------


def read_head(run_dir: str) -> HeadInfo:
    path = Path(run_dir)
    if (path / "latest").exists():
        path = path / "latest"
    try:
        return msgspec.json.decode((path / "head.json").read_bytes(), type=HeadInfo)
    except FileNotFoundError:
        raise ConfigError(
            f"no running cluster found: {path / 'head.json'} does not exist"
        ) from None


def query_status(run_dir: str, timeout: float = 5.0) -> tuple[HeadInfo, Status, BrokerStats | None]:
    info = read_head(run_dir)
    with SyncHubClient(info.endpoint, handshake_timeout=timeout) as client:
        status = client.request("head", StatusQuery(), timeout=timeout)
        broker = client.request("broker", BrokerStatsQuery(), timeout=timeout)
    assert isinstance(status, Status)
    return info, status, broker if isinstance(broker, BrokerStats) else None


def format_status(info: HeadInfo, status: Status, broker: BrokerStats | None) -> str:
    lines = [
        f"cluster {status.hub} at {info.endpoint} (pid {info.pid}), up {status.uptime_s:.0f} s"
    ]
    lines.append(f"run directory {info.run_dir}")
    by_service: dict[str, list[Any]] = {}
    for w in status.workers:
        by_service.setdefault(w.service, []).append(w)
    for service in sorted(by_service):
        ws = by_service[service]
        in_flight = sum(w.in_flight for w in ws)
        served = sum(w.served for w in ws)
        lines.append(
            f"  {service:<10} {len(ws)} worker(s)  in flight {in_flight:<5} served {served}"
        )
    c = status.counters
    if "episodes.episodes" in c:
        lines.append(
            f"episodes done {c['episodes.episodes']:.0f}, running {c['episodes.running']:.0f}, "
            f"accuracy {c['episodes.accuracy']:.3f}, {c['episodes.episodes_per_s']:.1f} ep/s"
        )
    if broker is not None:
        lines.append(
            f"broker received {broker.received}, pending {broker.pending}, "
            f"leased {broker.leased}, acked {broker.acked}, duplicates {broker.duplicates}"
        )
    lines.append(f"hub requests {status.requests}, retried {status.retried}")
    return "\n".join(lines) + "\n"


def request_down(run_dir: str, timeout: float = 10.0) -> HeadInfo:
    info = read_head(run_dir)
    with SyncHubClient(info.endpoint, handshake_timeout=timeout) as client:
        client.request("head", Shutdown("engine.cluster down"), timeout=timeout)
    return info


# --- CLI ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and run its episodes")
    up.add_argument("spec", nargs="?", default=None, help="cluster spec (TOML); default: embedded")
    up.add_argument("--episodes", type=int, default=None, help="override scheduler.episodes")
    up.add_argument("--run-dir", default=None, help="override run_dir")
    up.add_argument(
        "--resume", action="store_true", help="continue the latest run from its last checkpoint"
    )
    up.add_argument("--minutes", type=float, default=None, help="override learner minutes")
    up.add_argument("--steps", type=int, default=None, help="override learner steps")
    st = sub.add_parser("status", help="report a running cluster")
    st.add_argument("--run-dir", default="runs")
    dn = sub.add_parser("down", help="drain and stop a running cluster")
    dn.add_argument("--run-dir", default="runs")
    keys = sub.add_parser("keys", help="write CURVE server and client key pairs")
    keys.add_argument("dir")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            spec = load_spec(args.spec)
            changes: dict[str, Any] = {}
            if args.run_dir:
                changes["run_dir"] = args.run_dir
            if args.episodes is not None:
                changes["scheduler"] = msgspec.structs.replace(
                    spec.scheduler, episodes=args.episodes
                )
            learner_changes = {
                k: v for k, v in (("minutes", args.minutes), ("steps", args.steps)) if v is not None
            }
            if learner_changes:
                if spec.learner is None:
                    raise ConfigError("--minutes and --steps need a spec with a [learner]")
                changes["learner"] = msgspec.structs.replace(
                    spec.learner, config={**spec.learner.config, **learner_changes}
                )
            spec = msgspec.structs.replace(spec, **changes) if changes else spec
            summary = trio.run(
                lambda: run_cluster(spec, spec_name=args.spec or "default", resume=args.resume)
            )
            sys.stdout.write(format_summary(summary))
            return 0 if summary["episodes"] > 0 else 1
        if args.command == "status":
            sys.stdout.write(format_status(*query_status(args.run_dir)))
            return 0
        if args.command == "down":
            info = request_down(args.run_dir)
            sys.stdout.write(f"asked cluster at {info.endpoint} (pid {info.pid}) to stop\n")
            return 0
        if args.command == "keys":
            d = write_keys(args.dir)
            sys.stdout.write(f"wrote CURVE keys to {d}\n")
            return 0
    except (ConfigError, SecurityError, ValueError) as exc:
        sys.stderr.write(f"engine.cluster {args.command}: {exc}\n")
        return 2
    except Interrupted as exc:
        sys.stderr.write(f"engine.cluster {args.command}: {exc}\n")
        return 130  # as a shell reports a process stopped by Ctrl-C
    except (HubUnreachable, RequestTimeout, RemoteError) as exc:
        sys.stderr.write(f"engine.cluster {args.command}: cluster not reachable: {exc}\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
