"""Cluster specs: TOML decoded into msgspec Structs, so a wrong key is an error that names it.

Components are named by import string (`"actors.examiner:RecordExaminer"`) and resolved when the
cluster starts, which keeps `engine` free of imports from the layers above it.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from engine.actor import ConfigError
from engine.episode import Rules
from engine.security import CurveKeys
from protocols.dialects import DIALECTS


class ServiceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    actor: str  # import string of an engine.actor.Actor subclass
    workers: int = 1  # worker processes
    capacity: int = 64  # concurrent requests each worker accepts
    config: dict[str, Any] = {}  # the actor's Config, checked by the actor
    host: str = ""  # another service whose worker processes also run this one (saves processes)


class Hosted(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One actor of a worker process (the `--actors` list of `engine.worker`)."""

    actor: str
    config: dict[str, Any] = {}
    capacity: int = 64
    name: str = ""


class HeadSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bind: str = "tcp://127.0.0.1:*"  # `*` picks a free port
    heartbeat_s: float = 1.0
    curve: CurveKeys | None = None  # required when `bind` is not loopback
    python: str = ""  # interpreter for worker processes; default: this one


class WarmupSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A curriculum's first stage: until the learner announces version `versions`, episodes
    start with at most `max_turns` turns (1: diagnose from the presentation alone, a contextual
    bandit the policy learns several times faster), then with the spec's `rules`. Held-out
    evaluations and baselines always use `rules`. `versions = 0`: off."""

    versions: int = 0
    max_turns: int = 1


class SchedulerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    episodes: int = 500  # 0: run until `engine.cluster down`
    concurrency: int = 64
    group_size: int = 1
    seed: int = 0
    cases: str = "cases.bank:builtin"  # import string of a function returning a list of Case
    cases_args: dict[str, Any] = {}
    warmup: WarmupSpec = WarmupSpec()


class LearnerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The learner: `learners` processes `python -m MODULE --hub EP --run-dir DIR
    --groups-per-step N --config JSON --spec SPEC.json [--rank R --world W --dist HOST:PORT]`.
    With a learner the scheduler admits episodes by AReaL's staleness rule with
    `batch = groups_per_step * scheduler.group_size` (global, whatever the number of ranks).

    `learners = W > 1` trains one policy data-parallel: each rank leases `groups_per_step / W`
    groups per step and the ranks average their gradients (torch.distributed, gloo) after a TCP
    rendezvous that rank 0 binds at `rendezvous` (port 0: the head picks a free one). That
    traffic is neither encrypted nor authenticated: keep it on loopback or a trusted network."""

    module: str = "trainers.learner"
    groups_per_step: int = 8  # GRPO groups per training step, all ranks together
    max_staleness: int = 1  # 0: synchronous RL
    learners: int = 1  # data-parallel learner processes (ranks) training one policy
    rendezvous: str = "127.0.0.1:0"  # HOST:PORT of rank 0's torch.distributed rendezvous
    config: dict[str, Any] = {}  # the learner's own config, checked by the learner

    def __post_init__(self) -> None:
        if self.learners < 1:
            raise ValueError(f"learner.learners must be at least 1, got {self.learners}")
        if self.groups_per_step % self.learners:
            raise ValueError(
                f"learner.groups_per_step = {self.groups_per_step} is not divisible by "
                f"learner.learners = {self.learners}: every rank leases the same number of "
                "groups per step"
            )
        host, sep, port = self.rendezvous.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(
                f"learner.rendezvous {self.rendezvous!r} is not HOST:PORT (port 0: any free one)"
            )


class ClusterSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = "dxsim"
    run_dir: str = "runs"
    head: HeadSpec = HeadSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    rules: Rules = Rules()
    services: dict[str, ServiceSpec] = {}
    learner: LearnerSpec | None = None  # none: run episodes only (evaluation, data collection)

    def __post_init__(self) -> None:
        for required in ("patient", "examiner", "agent", "judge"):
            if required not in self.services:
                raise ValueError(
                    f"services.{required} is missing (need patient, examiner, agent, judge)"
                )
        for name, service in self.services.items():
            if service.workers < 1 or service.capacity < 1:
                raise ValueError(f"services.{name}: workers and capacity must be at least 1")
            if service.host:
                host = self.services.get(service.host)
                if host is None or host.host:
                    raise ValueError(
                        f"services.{name}.host = {service.host!r} must name a service "
                        "that is not itself hosted"
                    )
        if self.scheduler.concurrency < 1 or self.scheduler.group_size < 1:
            raise ValueError("scheduler.concurrency and scheduler.group_size must be at least 1")
        if self.rules.dialect not in DIALECTS:
            raise ValueError(f"rules.dialect {self.rules.dialect!r} is not one of {DIALECTS}")
        if self.rules.max_turns < 1 or self.rules.attempts < 1:
            raise ValueError("rules.max_turns and rules.attempts must be at least 1")
        warmup = self.scheduler.warmup
        if warmup.versions < 0 or not 1 <= warmup.max_turns <= self.rules.max_turns:
            raise ValueError(
                "scheduler.warmup: versions must be >= 0 and max_turns between 1 and "
                f"rules.max_turns ({self.rules.max_turns})"
            )
        if warmup.versions and self.learner is None:
            raise ValueError("scheduler.warmup counts learner versions: it needs a [learner]")
        if self.learner is not None:
            if self.learner.groups_per_step < 1 or self.learner.max_staleness < 0:
                raise ValueError(
                    "learner.groups_per_step must be >= 1 and learner.max_staleness >= 0"
                )
            if not self.learner.module.replace(".", "").replace("_", "").isalnum():
                raise ValueError(f"learner.module {self.learner.module!r} is not a module name")
            for key, why in (
                ("policy", "the learner's weights would not fit the agent's model"),
                ("temperature", "the learner would train on another distribution than sampled"),
            ):
                agent = self.services["agent"].config.get(key)
                trained = self.learner.config.get(key)
                if agent != trained:
                    raise ValueError(
                        f"services.agent.config.{key} and learner.config.{key} differ: {why} "
                        f"({agent} != {trained})"
                    )


def worker_plan(spec: ClusterSpec) -> dict[str, list[tuple[str, ServiceSpec]]]:
    """Worker process name -> the services it hosts (its own first, then hosted ones)."""
    plan: dict[str, list[tuple[str, ServiceSpec]]] = {}
    for name, service in spec.services.items():
        if service.host:
            continue
        guests = [(n, s) for n, s in spec.services.items() if s.host == name]
        for i in range(service.workers):
            plan[f"{name}-{i}"] = [(name, service), *guests]
    return plan


def parse_spec(text: str, where: str = "spec") -> ClusterSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        return msgspec.convert(raw, ClusterSpec)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_spec(path: str | Path | None = None) -> ClusterSpec:
    """The spec at `path`, or the embedded default."""
    if path is None:
        text = resources.files("engine").joinpath("default.toml").read_text()
        return parse_spec(text, "embedded default spec")
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read spec {p}: {exc}") from None
    return parse_spec(text, str(p))
