"""The learner loop against a real hub and broker: it leases groups, steps, acks, publishes each
version on its weight server and announces it to the head, records metrics, checkpoints, and a
second learner in the same run directory resumes where the first stopped. (Helpers here are
shared by the learner process tests: signals, data-parallel ranks.)"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq

torch = pytest.importorskip("torch")

from actors.lm import PolicyConfig, build_policy, generate  # noqa: E402
from engine.actor import Actor, handles  # noqa: E402
from engine.broker import Broker  # noqa: E402
from engine.client import local_client  # noqa: E402
from engine.hub import Hub  # noqa: E402
from engine.logs import read_json_lines  # noqa: E402
from engine.routing import RouterConfig  # noqa: E402
from engine.worker import serve  # noqa: E402
from protocols import (  # noqa: E402
    Acked,
    BrokerStats,
    BrokerStatsQuery,
    Filtered,
    Publish,
    Shutdown,
    Status,
    Terminal,
    Trajectory,
    Turn,
    VersionApplied,
    WeightsAvailable,
    pack_floats,
    pack_ids,
)
from tests.fakes import verdict  # noqa: E402
from trainers.learner import LearnerConfig, learn  # noqa: E402
from trainers.trainer import OptimConfig, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TINY = PolicyConfig(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=600)


class FakeHead(Actor):
    """The head's side of the learner protocol: version notices and the final Shutdown."""

    service = "head"

    def __init__(self) -> None:
        super().__init__()
        self.versions: list[int] = []
        self.endpoints: set[str] = set()
        self.shutdowns: list[str] = []
        self.filtered: list[int] = []

    @handles(Filtered)
    def filtered_groups(self, msg: Filtered) -> Acked:
        self.filtered.append(msg.trajectories)
        return Acked(msg.trajectories)

    @handles(WeightsAvailable)
    def weights(self, msg: WeightsAvailable) -> VersionApplied:
        self.versions.append(msg.version)
        self.endpoints.add(msg.endpoint)
        return VersionApplied("head", msg.version)

    @handles(Shutdown)
    def shutdown(self, msg: Shutdown) -> Status:
        self.shutdowns.append(msg.reason)
        return Status("head", 0.0, [], {}, 0, 0)


def trajectories(n_groups: int, size: int = 4) -> list[Trajectory]:
    """Groups whose samples are real policy outputs; half of each group is rewarded."""
    policy = build_policy(TINY)
    ids = [policy.bos_id, *policy.tokenizer.encode("M 61 | cough").ids, policy.act_id]
    out = []
    for g in range(n_groups):
        for s in range(size):
            tokens, logprobs = generate(policy, [ids], seeds=[g * size + s])[0]
            turn = Turn(
                index=0,
                text="",
                action=None,
                observation=None,
                prompt_ids=pack_ids(ids),
                token_ids=pack_ids(tokens),
                logprobs=pack_floats(logprobs),
            )
            out.append(
                Trajectory(
                    id=f"g{g}.{s}",
                    episode_id=f"g{g}.{s}",
                    case_id=f"c{g}",
                    group_id=f"g{g}",
                    sample=s,
                    group_size=size,
                    turns=[turn],
                    terminal=Terminal.DIAGNOSED,
                    reason="diagnosed",
                    verdict=verdict(correct=s % 2 == 0),
                )
            )
    return out


@asynccontextmanager
async def hub_with_broker(published: list[Trajectory]) -> AsyncIterator[tuple[str, Any, FakeHead]]:
    """A real hub on tcp loopback with the head's side and a broker holding `published`; yields
    (endpoint, a local client, the fake head)."""
    ctx = zmq.Context()
    head, broker = FakeHead(), Broker()
    async with trio.open_nursery() as nursery:
        hub = Hub(["tcp://127.0.0.1:*"], ctx=ctx, config=RouterConfig(heartbeat_s=0.5))
        ep = (await nursery.start(hub.run))[0]
        for actor in (head, broker):
            await nursery.start(lambda a=actor, **kw: serve(a, ep, ctx=ctx, **kw))
        client = local_client(hub, nursery, "test")
        for t in published:
            await client.request("broker", Publish(t))
        yield ep, client, head
        nursery.cancel_scope.cancel()


async def start_learner(
    hub: str, run_dir: Path, groups_per_step: int, config: LearnerConfig, *extra: str
) -> trio.Process:
    """`python -m trainers.learner` as a real process; its output goes to `run_dir`."""
    import msgspec

    run_dir.mkdir(parents=True, exist_ok=True)
    rank = extra[extra.index("--rank") + 1] if "--rank" in extra else "0"
    name = "learner" if rank == "0" else f"learner-{rank}"  # as the cluster names them
    argv = [
        sys.executable,
        "-m",
        "trainers.learner",
        "--hub",
        hub,
        "--run-dir",
        str(run_dir),
        "--groups-per-step",
        str(groups_per_step),
        "--config",
        msgspec.json.encode(config).decode(),
        "--log-file",
        str(run_dir / f"{name}.jsonl"),
        *extra,
    ]
    with (run_dir / f"{name}.stderr").open("ab") as out:
        return await trio.lowlevel.open_process(
            argv, cwd=ROOT, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_json_lines(run_dir / "metrics.jsonl")


def checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "checkpoints" / "latest.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


async def run_learner(run_dir: Path, steps: int, published: list[Trajectory]) -> tuple:
    config = LearnerConfig(policy=TINY, steps=steps, checkpoint_every=1, poll_s=0.2)
    async with hub_with_broker(published) as (ep, client, head):
        learner = await learn(ep, config, groups_per_step=2, run_dir=run_dir)
        stats = await client.request("broker", BrokerStatsQuery())
    return head, stats, learner


async def test_learner_trains_publishes_and_resumes(tmp_path: Path) -> None:
    data = trajectories(6)
    head, stats, learner = await run_learner(tmp_path, 2, data)
    assert head.versions == [0, 1, 2]  # version 0 first: where this learner starts
    assert head.shutdowns == ["training finished"]
    assert isinstance(stats, BrokerStats)
    assert (stats.acked, stats.pending) == (16, 8)  # 2 steps x 2 groups x 4; 2 groups left
    assert len(head.endpoints) == 1  # one weight server for the whole run
    lines = read_metrics(tmp_path)
    assert [x["step"] for x in lines] == [1, 2]
    assert all(x["accuracy"] == 0.5 and x["trajectories"] == 8 for x in lines)
    assert (tmp_path / "checkpoints" / "latest.pt").exists()
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000

    # A new learner in the same run directory resumes at version 2 and takes one more step
    # (the broker of this test is new, so it gets the groups again).
    head, _, learner = await run_learner(tmp_path, 3, data)
    assert head.versions == [2, 3] and learner.trainer.steps == 3
    lines = read_metrics(tmp_path)
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert lines[2]["elapsed_s"] >= lines[1]["elapsed_s"]


def uniform_groups(n_groups: int, size: int = 4) -> list[Trajectory]:
    """Groups whose samples all got the answer right: no advantage anywhere."""
    import msgspec

    return [
        msgspec.structs.replace(
            t, id=f"u{t.id}", episode_id=f"u{t.id}", group_id=f"u{t.group_id}", verdict=verdict()
        )
        for t in trajectories(n_groups, size)
    ]


# u0 g0 u1 g1 | g2 u2 g3, or with at most one filtered per step: u0 g0 u1 | g1 g2
@pytest.mark.parametrize(
    ("cap", "filtered", "trained_rows", "accuracy"),
    [(512, [2, 1], [8, 8], [12 / 16, 8 / 12]), (1, [1, 0], [4, 8], [10 / 12, 4 / 8])],
)
async def test_dynamic_sampling_steps_on_groups_with_signal(
    tmp_path: Path, cap: int, filtered: list[int], trained_rows: list[int], accuracy: list[float]
) -> None:
    """With `filter_uniform_groups`, groups whose samples all scored the same are acked and
    counted but not trained on: the learner leases more until its step holds `groups_per_step`
    groups with signal, or until it has filtered `max_filtered_per_step` (then a uniform group
    takes a place, and trains nothing)."""
    mixed, uniform = trajectories(4), uniform_groups(3)
    by_group = lambda ts, g: [t for t in ts if t.group_id == g]  # noqa: E731
    published = [  # the broker hands groups out in this order: u0 g0 u1 g1 g2 u2 g3
        *by_group(uniform, "ug0"), *by_group(mixed, "g0"), *by_group(uniform, "ug1"),
        *by_group(mixed, "g1"), *by_group(mixed, "g2"), *by_group(uniform, "ug2"),
        *by_group(mixed, "g3"),
    ]  # fmt: skip
    config = LearnerConfig(
        policy=TINY,
        steps=2,
        checkpoint_every=1,
        poll_s=0.2,
        filter_uniform_groups=True,
        max_filtered_per_step=cap,
    )
    async with hub_with_broker(published) as (ep, client, head):
        await learn(ep, config, groups_per_step=2, run_dir=tmp_path)
        stats = await client.request("broker", BrokerStatsQuery())
    lines = read_metrics(tmp_path)
    assert [x["filtered_groups"] for x in lines] == filtered
    assert [x["train_rows_trained"] for x in lines] == trained_rows  # 4 per group with signal
    assert [x["accuracy"] for x in lines] == pytest.approx(accuracy, abs=1e-5)  # filtered count
    assert [x["staleness_max"] for x in lines] == [0, 1]
    assert isinstance(stats, BrokerStats)
    assert stats.acked == sum(x["trajectories"] for x in lines)  # the filtered ones are acked too
    assert head.filtered == [4] * sum(filtered)  # each one told to the head as it was acked
    assert head.versions == [0, 1, 2]


async def test_after_a_cold_start_the_random_policys_rollouts_are_dropped(tmp_path: Path) -> None:
    """While the learner clones its demonstrator, admission lets the agents play a batch or two
    with the random policy (version 0). Once the clone is version 1 (its checkpoint records the
    floor), those groups are acked unused and told to the head, not trained on or counted in the
    accuracy, and the learner leases more in their place."""
    import msgspec

    trainer = Trainer(TINY, OptimConfig())
    trainer.version = 1  # what `Learner.cold_start` leaves, checkpointed
    trainer.save(tmp_path / "checkpoints" / "latest.pt", {"elapsed_s": 0.0, "floor": 1})

    def made_by(version: int, group: list[Trajectory]) -> list[Trajectory]:
        return [
            msgspec.structs.replace(
                t, turns=[msgspec.structs.replace(u, policy_version=version) for u in t.turns]
            )
            for t in group
        ]

    data = trajectories(5)
    groups = [[t for t in data if t.group_id == f"g{g}"] for g in range(5)]
    old = [t for g in groups[:3] for t in made_by(0, g)]  # played during the clone
    new = [t for g in groups[3:] for t in made_by(1, g)]
    wrong = [msgspec.structs.replace(t, verdict=verdict(correct=False)) for t in old]
    config = LearnerConfig(policy=TINY, steps=1, checkpoint_every=1, poll_s=0.2)
    async with hub_with_broker([*wrong, *new]) as (ep, client, head):
        learner = await learn(ep, config, groups_per_step=2, run_dir=tmp_path)
        stats = await client.request("broker", BrokerStatsQuery())
    lines = read_metrics(tmp_path)
    assert [x["dropped_old"] for x in lines] == [12]  # 3 groups of 4
    assert [x["accuracy"] for x in lines] == [0.5]  # the dropped ones, all wrong, do not count
    assert [x["staleness_max"] for x in lines] == [0]  # the trained groups are the clone's
    assert [x["trajectories"] for x in lines] == [8]
    # leases of 2 groups: g0 g1 (both old: acked at once), g2 g3 (g2 dropped), then g4
    assert head.filtered == [8, 4]
    assert isinstance(stats, BrokerStats) and stats.acked == 20 and stats.pending == 0
    assert learner.floor == 1 and checkpoint(tmp_path)["extra"]["floor"] == 1


def test_the_filter_cap_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="max_filtered_per_step"):
        LearnerConfig(max_filtered_per_step=-1)


def test_the_learner_needs_sampling_agents() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        LearnerConfig(temperature=0.0)  # greedy agents are for evaluation
