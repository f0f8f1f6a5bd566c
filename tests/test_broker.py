"""The first rollout broker: duplicates dropped, only complete groups handed out, leases acked."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from engine.actor import ActorError
from engine.broker import Broker, BrokerConfig
from protocols import Ack, BrokerStatsQuery, ErrorCode, Publish, Pull, Trajectory
from tests.fakes import member


def traj(group: str, sample: int, size: int) -> Trajectory:
    return member(group, sample, size)


async def test_groups_leases_and_duplicates(tmp_path) -> None:  # noqa: ANN001
    broker = Broker(BrokerConfig(jsonl=str(tmp_path / "t.jsonl")))
    await broker.start()
    assert broker.publish(Publish(traj("g1", 1, 2))).duplicate is False
    assert (await broker.pull(Pull(max_groups=5))).groups == []  # g1 is not complete yet
    assert broker.publish(Publish(traj("g1", 1, 2))).duplicate is True
    broker.publish(Publish(traj("g1", 0, 2)))
    broker.publish(Publish(traj("g2", 0, 1)))
    got = await broker.pull(Pull(max_groups=1))
    assert [[t.sample for t in g] for g in got.groups] == [[0, 1]] and got.lease
    stats = broker.stats(BrokerStatsQuery())
    assert (stats.received, stats.duplicates, stats.pending, stats.leased) == (3, 1, 1, 2)
    assert broker.ack(Ack(got.lease)).count == 2
    with pytest.raises(ActorError) as exc:
        broker.ack(Ack(got.lease))
    assert exc.value.code is ErrorCode.NOT_FOUND
    await broker.close()
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ["g1.0/t", "g1.1/t", "g2.0/t"]


async def test_durable_broker_restarts_from_its_log(tmp_path) -> None:  # noqa: ANN001
    config = BrokerConfig(log_dir=str(tmp_path / "log"), max_pending=3)
    broker = Broker(config)
    await broker.start()
    now = [0.0]
    broker.clock = lambda: now[0]
    for t in (traj("g1", 0, 2), traj("g1", 1, 2), traj("g2", 0, 1)):
        assert broker.publish(Publish(t)).duplicate is False
    with pytest.raises(ActorError) as exc:  # backpressure: max_pending reached
        broker.publish(Publish(traj("g3", 0, 1)))
    assert exc.value.code is ErrorCode.OVERLOADED
    first = await broker.pull(Pull(max_groups=1, lease_s=5.0))
    assert broker.ack(Ack(first.lease)).count == 2
    second = await broker.pull(Pull(max_groups=1, lease_s=5.0))
    now[0] = 6.0  # the lease on g2 expires: re-delivered, its ack refused
    stats = broker.stats(BrokerStatsQuery())
    assert (stats.received, stats.pending, stats.leased, stats.acked) == (3, 1, 0, 2)
    with pytest.raises(ActorError):
        broker.ack(Ack(second.lease))
    await broker.close()

    broker = Broker(config)
    await broker.start()
    assert broker.publish(Publish(traj("g1", 0, 2))).duplicate is True  # acked before restart
    again = await broker.pull(Pull(max_groups=5))
    assert [[t.id for t in g] for g in again.groups] == [["g2.0/t"]]
    assert broker.ack(Ack(again.lease)).count == 1
    await broker.close()


async def test_long_poll_returns_when_a_group_completes() -> None:
    broker = Broker()
    await broker.start()
    got: list = []

    async def learner() -> None:
        got.append(await broker.pull(Pull(max_groups=2, wait_s=30.0)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(learner)
        await trio.testing.wait_all_tasks_blocked()
        broker.publish(Publish(traj("g1", 0, 2)))  # incomplete: the poll keeps waiting
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        broker.publish(Publish(traj("g1", 1, 2)))
    assert [[t.sample for t in g] for g in got[0].groups] == [[0, 1]]


async def test_long_poll_ends_empty_at_its_deadline(autojump_clock) -> None:  # noqa: ANN001
    broker = Broker()
    await broker.start()
    t0 = trio.current_time()
    reply = await broker.pull(Pull(max_groups=1, wait_s=5.0))
    assert reply.groups == [] and reply.lease == ""
    assert trio.current_time() - t0 == pytest.approx(5.0)


@pytest.mark.parametrize("keep", [0, 1, 3])
async def test_jsonl_rotates_and_stays_bounded(tmp_path, keep: int) -> None:  # noqa: ANN001
    path = tmp_path / "trajectories.jsonl"
    broker = Broker(BrokerConfig(jsonl=str(path), jsonl_keep=keep))
    await broker.start()
    line = len(broker._encoder.encode(traj("g000", 0, 1))) + 1  # every id below has this length
    broker._jsonl_max_bytes = 3 * line  # the public knob is MB; three lines a file here
    for n in range(20):
        broker.publish(Publish(traj(f"g{n:03}", 0, 1)))
        files = sorted(tmp_path.iterdir())
        assert len(files) <= keep + 1
        assert all(f.stat().st_size <= 3 * line for f in files)
    await broker.close()
    names = [path.name] + [f"{path.name}.{i}" for i in range(1, keep + 1)]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(names)
    ids = [  # newest file first, each read oldest line first
        [json.loads(line)["id"] for line in (tmp_path / name).read_text().splitlines()]
        for name in names
    ]
    assert ids[0] == ["g018.0/t", "g019.0/t"]  # the newest lines are in trajectories.jsonl
    assert [i for file in reversed(ids) for i in file] == [
        f"g{n:03}.0/t" for n in range(20 - 2 - 3 * keep, 20)
    ]


async def test_jsonl_appends_after_a_restart_and_zero_means_no_limit(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"id": "before"}\n' * 4)
    broker = Broker(BrokerConfig(jsonl=str(path), jsonl_max_mb=0))
    await broker.start()
    broker._jsonl_max_bytes = 0
    for n in range(5):
        broker.publish(Publish(traj(f"g{n}", 0, 1)))
    await broker.close()
    assert [f.name for f in tmp_path.iterdir()] == ["t.jsonl"]
    assert len(path.read_text().splitlines()) == 9

    broker = Broker(BrokerConfig(jsonl=str(path), jsonl_max_mb=1))
    await broker.start()
    broker._jsonl_max_bytes = path.stat().st_size + 1  # the existing size counts
    broker.publish(Publish(traj("g9", 0, 1)))
    await broker.close()
    assert len((tmp_path / "t.jsonl.1").read_text().splitlines()) == 9
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["g9.0/t"]


@pytest.mark.parametrize("field", ["jsonl_max_mb", "jsonl_keep"])
def test_negative_jsonl_limits_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be >= 0"):
        BrokerConfig(**{field: -1})
