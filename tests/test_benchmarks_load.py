"""Smoke checks of the asynchrony and broker-load benchmarks: their logic, never their timings.

The simulated server and the rollouts run on trio's `MockClock` (autojump), so simulated seconds
pass instantly and deterministically; `dxsim_rollout` runs once for real, tiny, through the hub.
"""

from __future__ import annotations

import collections
import math

import msgspec
import pytest
import trio
import trio.testing

from benchmarks.asynchrony import (
    BatchingServer,
    Outcome,
    Setting,
    dxsim_rollout,
    episode_lengths,
    inprocess_rollout,
    rows,
    sync_rollout,
)
from benchmarks.broker_load import (
    GROUP_SIZE,
    make_trajectories,
    run_backpressure,
    run_load,
)
from benchmarks.common import Context
from benchmarks.registry import available
from benchmarks.report import COMPARISONS
from protocols import Trajectory, decode, encode

TINY = Setting(batch=6, steps=3, train_s=0.05, max_turns=6)


def _mock_run(fn, *args):
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


# --- the simulated server ------------------------------------------------------------------------


def test_requests_queued_together_are_one_batch_and_latecomers_wait_for_the_next():
    server = BatchingServer(a_s=0.02, b_s=0.001, max_batch=4, steps=1)
    done: list[tuple[str, float]] = []

    async def one(tag: str) -> None:
        await server.generate()
        done.append((tag, trio.current_time()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            async with trio.open_nursery() as requests:
                for i in range(6):  # 6 > max_batch: a batch of 4, then one of 2
                    requests.start_soon(one, f"early{i}")
                await trio.sleep(0.001)  # the first batch is running
                requests.start_soon(one, "late")
            nursery.cancel_scope.cancel()

    _mock_run(main)
    assert server.decode_steps == 2 and server.sequences == 7 and server.served == 7
    times = collections.Counter(t for _, t in done)
    assert sorted(times.values()) == [3, 4]  # late joined the 2 leftovers in the second batch
    first, second = sorted(times)
    assert first == pytest.approx(0.02 + 0.004)
    assert second == pytest.approx(first + 0.02 + 0.003)


def test_continuous_batching_lets_a_latecomer_join_at_the_next_step():
    server = BatchingServer(a_s=0.04, b_s=0.0, max_batch=8, steps=4)  # 10 ms per step
    finished: dict[str, float] = {}

    async def one(tag: str, delay: float) -> None:
        await trio.sleep(delay)
        await server.generate()
        finished[tag] = trio.current_time()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            async with trio.open_nursery() as requests:
                requests.start_soon(one, "a", 0.0)
                requests.start_soon(one, "b", 0.005)  # mid-step: joins at 10 ms
            nursery.cancel_scope.cancel()

    _mock_run(main)
    assert finished["a"] == pytest.approx(0.04)
    assert finished["b"] == pytest.approx(0.05)  # one step late, not one turn late
    assert server.decode_steps == 5 and server.mean_batch == pytest.approx(8 / 5)


def test_server_stamps_the_policy_version_it_holds():
    server = BatchingServer(a_s=0.01, b_s=0.0, max_batch=2)

    async def main() -> list[int]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            first = await server.generate()
            server.version = 3
            second = await server.generate()
            nursery.cancel_scope.cancel()
        return [first, second]

    assert _mock_run(main) == [0, 3]


def test_bad_server_settings_are_refused():
    with pytest.raises(ValueError):
        BatchingServer(a_s=-1.0, b_s=0.0, max_batch=4)
    with pytest.raises(ValueError):
        BatchingServer(a_s=0.0, b_s=0.0, max_batch=4, steps=0)


# --- episodes and rollouts -----------------------------------------------------------------------


def test_episode_lengths_are_seeded_long_tailed_and_capped():
    setting = Setting()
    lengths = episode_lengths(setting, 20_000)
    assert lengths == episode_lengths(setting, 20_000)
    assert lengths != episode_lengths(Setting(seed=1), 20_000)
    assert min(lengths) == 1 and max(lengths) == setting.max_turns
    assert sum(lengths) / len(lengths) == pytest.approx(setting.mean_turns, rel=0.03)


def test_sync_rollout_plays_the_seeded_episodes_to_a_diagnosis_with_no_staleness():
    out = _mock_run(sync_rollout, TINY)
    n = TINY.batch * TINY.steps
    assert out.trajectories == n
    assert sorted(out.turns) == sorted(episode_lengths(TINY, n))
    assert out.staleness == [0] * n
    assert 0 < out.mean_batch <= TINY.batch


def test_inprocess_rollout_consumes_whole_batches_of_finished_episodes():
    out = _mock_run(inprocess_rollout, TINY)
    assert out.trajectories == TINY.batch * TINY.steps
    assert all(1 <= t <= TINY.max_turns for t in out.turns)
    assert min(out.staleness) >= 0
    pool = collections.Counter(episode_lengths(TINY, (TINY.steps + 3) * TINY.batch))
    assert not collections.Counter(out.turns) - pool  # every consumed length came from the list


def test_dxsim_rollout_through_the_engine():
    setting = Setting(batch=4, steps=2, train_s=0.02, max_turns=6)
    out = trio.run(dxsim_rollout, setting)
    assert out.trajectories == 8
    assert all(1 <= t <= setting.max_turns for t in out.turns)
    assert len(out.staleness) == 8 and min(out.staleness) >= 0
    assert out.busy_s > 0 and out.wall_s > 0


def test_rows_cover_every_asynchrony_comparison():
    out = Outcome(trajectories=8, wall_s=2.0, busy_s=1.0, mean_batch=3.0, staleness=[0, 1, 2])
    out.turns = [1, 2, 3]
    made = {"server_util_full"}
    for name in ("sync", "dxsim", "inprocess", "dxsim_s2", "sync_cb", "dxsim_cb"):
        made |= {r.metric for r in rows(name, out, "", 1)}
    needed = {
        pair[1] for c in COMPARISONS for pair in (c.subject, c.baseline) if pair[0] == "asynchrony"
    }
    assert needed and needed <= made
    over = {r.metric: r.value for r in rows("dxsim", out, "", 1)}
    assert over["over_staleness_dxsim"] == pytest.approx(1 / 3)
    assert over["traj_per_s_dxsim"] == 4.0 and over["server_util_dxsim"] == 0.5


# --- the broker under load -----------------------------------------------------------------------


def test_trajectory_is_realistic_and_survives_the_wire():
    t = make_trajectories()
    assert isinstance(t, Trajectory) and t.group_size == GROUP_SIZE
    assert decode(encode(t)) == t
    assert 8_000 < len(msgspec.msgpack.encode(t)) < 20_000
    assert all(len(turn.logprobs) == len(turn.token_ids) > 0 for turn in t.turns)


def test_load_run_acks_every_trajectory_and_holds_little():
    out = run_load(240, samples=4)
    assert out.published == out.acked == 240
    assert out.max_pending <= GROUP_SIZE  # a consumer that keeps up
    assert len(out.rss_mb) == 4 and out.mb_per_s > 0


def test_backpressure_refuses_beyond_max_pending_and_still_delivers_everything():
    out = run_backpressure(400, max_pending=40)
    assert out.published == 400
    assert out.refused > 0
    assert out.max_pending <= 40


def test_broker_load_smoke_rows_and_registration():
    found = available()
    assert found["asynchrony"] == "benchmarks.asynchrony:bench"
    assert found["broker_load"] == "benchmarks.broker_load:bench"
    from benchmarks.broker_load import bench

    made = {r.metric: r.value for r in bench(Context(quick=True))}
    needed = {
        pair[1] for c in COMPARISONS for pair in (c.subject, c.baseline) if pair[0] == "broker_load"
    }
    assert needed and needed <= set(made)
    assert made["bp_max_pending"] <= 100 and made["bp_refused"] > 0
    assert all(not math.isnan(v) for v in made.values())
