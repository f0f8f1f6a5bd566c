"""Data-parallel learner ranks as real processes (gloo on 127.0.0.1) against a real hub and
broker: two ranks train one policy, end with identical weights, and only rank 0 writes metrics
and checkpoints; their first step equals one rank's step on the same groups; a resumed pair
starts both ranks from rank 0's checkpoint. And the spec refuses ranks that cannot share a step."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

torch = pytest.importorskip("torch")

from actors.lm import build_policy  # noqa: E402
from engine.actor import ConfigError  # noqa: E402
from engine.cluster import learner_argv  # noqa: E402
from engine.spec import load_spec, parse_spec  # noqa: E402
from protocols import BrokerStats, BrokerStatsQuery  # noqa: E402
from tests.test_learner import (  # noqa: E402
    TINY,
    checkpoint,
    hub_with_broker,
    read_metrics,
    start_learner,
    trajectories,
)
from trainers.learner import LearnerConfig, learn  # noqa: E402

pytestmark = pytest.mark.timeout(600)

DEFAULT = (Path(__file__).resolve().parent.parent / "engine" / "default.toml").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished(run_dir: Path, rank: int) -> dict:
    """The rank's last `training finished` log record."""
    name = "learner.jsonl" if rank == 0 else f"learner-{rank}.jsonl"
    records = [json.loads(x) for x in (run_dir / name).read_text().splitlines()]
    return [r for r in records if r.get("event") == "training finished"][-1]


async def run_ranks(hub: str, run_dir: Path, config: LearnerConfig, world: int = 2) -> None:
    dist = f"127.0.0.1:{free_port()}"
    ranks = []
    try:
        for rank in range(world):
            extra = ("--rank", str(rank), "--world", str(world), "--dist", dist)
            ranks.append(await start_learner(hub, run_dir, 4, config, *extra))
        with trio.fail_after(300):
            codes = [await p.wait() for p in ranks]
    finally:
        for p in ranks:
            if p.returncode is None:
                p.kill()
                await p.wait()
    logs = {f.name: f.read_text()[-3000:] for f in run_dir.glob("*.stderr")}
    assert codes == [0] * world, logs


async def test_two_ranks_train_one_policy(tmp_path: Path) -> None:
    data = trajectories(12)
    pair, solo = tmp_path / "pair", tmp_path / "solo"
    config = LearnerConfig(policy=TINY, steps=1, checkpoint_every=1, poll_s=0.2, baselines={})

    # step 1: four groups, two per rank
    async with hub_with_broker(data[:16]) as (ep, client, head):
        await run_ranks(ep, pair, config)
        stats = await client.request("broker", BrokerStatsQuery())
    assert isinstance(stats, BrokerStats) and (stats.acked, stats.pending) == (16, 0)
    assert head.versions == [0, 1] and len(head.endpoints) == 1  # rank 0 alone announces
    assert head.shutdowns == ["training finished"]
    (line,) = read_metrics(pair)  # the global batch, from rank 0 only
    assert (line["step"], line["trajectories"], line["groups"], line["rows"]) == (1, 16, 4, 16)
    assert line["accuracy"] == 0.5 and line["train_rows_trained"] == 16
    assert not list(pair.glob("learner-1*.png")) and (pair / "learning_curve.png").exists()
    assert finished(pair, 0)["weights_sha256"] == finished(pair, 1)["weights_sha256"]

    # one rank on the same four groups takes the same step (the rows' token counts are equal,
    # so the average of the ranks' gradients is the whole batch's gradient)
    async with hub_with_broker(data[:16]) as (ep, _, _):
        await learn(ep, config, 4, solo, handle_signals=False)
    (one,) = read_metrics(solo)
    for key in ("trajectories", "rows", "reward", "accuracy", "train_tokens"):
        assert one[key] == line[key], key
    assert one["train_loss"] == pytest.approx(line["train_loss"], abs=1e-6)
    assert one["train_grad_norm"] == pytest.approx(line["train_grad_norm"], rel=1e-4)
    # Equal up to the order of float sums: Adam's first step is about lr * sign(gradient), so
    # a gradient near 0 can differ in the last bits and move a weight ~1e-6 apart; a step
    # moves weights by up to lr = 5e-4.
    a, b = checkpoint(pair)["model"], checkpoint(solo)["model"]
    start = build_policy(TINY).model.state_dict()
    assert a.keys() == b.keys() == start.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)
    assert max(float((a[n] - start[n]).abs().max()) for n in a) > 1e-4

    # both ranks resume from rank 0's checkpoint and take two more steps together
    config = LearnerConfig(policy=TINY, steps=3, checkpoint_every=1, poll_s=0.2, baselines={})
    async with hub_with_broker(data[16:]) as (ep, _, head):
        await run_ranks(ep, pair, config)
    assert head.versions == [1, 2, 3]
    assert [m["step"] for m in read_metrics(pair)] == [1, 2, 3]
    assert all(m["trajectories"] == 16 for m in read_metrics(pair))
    assert finished(pair, 0)["steps"] == finished(pair, 1)["steps"] == 3
    assert finished(pair, 0)["weights_sha256"] == finished(pair, 1)["weights_sha256"]
    assert checkpoint(pair)["steps"] == 3


def test_the_spec_refuses_ranks_that_cannot_share_a_step() -> None:
    text = DEFAULT.replace("groups_per_step = 8", "groups_per_step = 8\nlearners = 3")
    with pytest.raises(ConfigError, match="groups_per_step = 8 is not divisible by"):
        parse_spec(text)
    with pytest.raises(ConfigError, match="learners must be at least 1"):
        parse_spec(DEFAULT.replace("groups_per_step = 8", "groups_per_step = 8\nlearners = 0"))
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_spec(DEFAULT.replace("groups_per_step = 8", 'groups_per_step = 8\nrendezvous = "x"'))


def test_the_cluster_starts_one_process_per_rank(tmp_path: Path) -> None:
    spec = parse_spec(DEFAULT.replace("groups_per_step = 8", "groups_per_step = 8\nlearners = 2"))
    argvs = [learner_argv("python", "tcp://h:1", spec, tmp_path, r, "127.0.0.1:9") for r in (0, 1)]
    for rank, argv in enumerate(argvs):
        assert argv[argv.index("--rank") + 1] == str(rank)
        assert argv[argv.index("--world") + 1] == "2"
        assert argv[argv.index("--dist") + 1] == "127.0.0.1:9"
        assert argv[argv.index("--groups-per-step") + 1] == "8"  # global; each rank takes 4
    assert argvs[0][argvs[0].index("--log-file") + 1] != argvs[1][argvs[1].index("--log-file") + 1]
    assert "--rank" not in learner_argv("python", "tcp://h:1", load_spec(), tmp_path)
