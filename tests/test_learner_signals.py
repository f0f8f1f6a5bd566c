"""SIGTERM and SIGINT end a real learner process cleanly: the step in flight is finished or
abandoned, the checkpoint holds every step that `metrics.jsonl` records, and it exits 0. (The
checkpoint interval is larger than the run, so only the signal path can have written it.)"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

pytest.importorskip("torch")

from protocols import BrokerStats, BrokerStatsQuery  # noqa: E402
from tests.test_learner import (  # noqa: E402
    TINY,
    checkpoint,
    hub_with_broker,
    read_metrics,
    start_learner,
    trajectories,
)
from trainers.learner import LearnerConfig  # noqa: E402

pytestmark = pytest.mark.timeout(300)

CONFIG = LearnerConfig(policy=TINY, checkpoint_every=1000, poll_s=0.2, stop_cluster=False)


async def wait_for_steps(process: trio.Process, run_dir: Path, steps: int) -> None:
    with trio.fail_after(180):
        while len(read_metrics(run_dir)) < steps:
            assert process.returncode is None, (run_dir / "learner.stderr").read_text()
            await trio.sleep(0.05)  # polls the file; the wait is on its contents


async def stop_with(process: trio.Process, signum: int, run_dir: Path) -> int:
    process.send_signal(signum)
    try:
        with trio.fail_after(30):
            return await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_sigterm_while_waiting_for_groups_checkpoints_every_step(tmp_path: Path) -> None:
    async with hub_with_broker(trajectories(3)) as (ep, client, head):
        process = await start_learner(ep, tmp_path, 1, CONFIG)
        try:
            await wait_for_steps(process, tmp_path, 3)  # then it long-polls an empty broker
        finally:
            code = await stop_with(process, signal.SIGTERM, tmp_path)
        stats = await client.request("broker", BrokerStatsQuery())
    assert code == 0, (tmp_path / "learner.stderr").read_text()
    steps = [m["step"] for m in read_metrics(tmp_path)]
    assert steps == [1, 2, 3]
    saved = checkpoint(tmp_path)
    assert (saved["steps"], saved["version"]) == (3, 3)
    assert isinstance(stats, BrokerStats) and stats.acked == 12
    assert head.versions == [0, 1, 2, 3] and head.shutdowns == []  # down is the cluster's call


async def test_sigint_mid_run_keeps_the_step_in_flight_consistent(tmp_path: Path) -> None:
    async with hub_with_broker(trajectories(24)) as (ep, client, _):
        process = await start_learner(ep, tmp_path, 1, CONFIG)
        try:
            await wait_for_steps(process, tmp_path, 2)
        finally:
            code = await stop_with(process, signal.SIGINT, tmp_path)
        stats = await client.request("broker", BrokerStatsQuery())
    assert code == 0, (tmp_path / "learner.stderr").read_text()
    lines = read_metrics(tmp_path)
    assert [m["step"] for m in lines] == list(range(1, len(lines) + 1))
    assert checkpoint(tmp_path)["steps"] == lines[-1]["step"] >= 2
    # what was trained on was acked; a lease taken for the abandoned next step is not
    assert isinstance(stats, BrokerStats) and stats.acked == 4 * lines[-1]["step"]
