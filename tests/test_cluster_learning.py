"""The embedded default's learning loop as real processes over tcp loopback: `up` trains the hf
agent for a few GRPO steps and stops cleanly, `up --resume` continues from the checkpoint, a
learner killed with SIGKILL mid-run is restarted by the supervisor and resumes, and `down` stops
two data-parallel learner ranks with a checkpoint of every step they recorded."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from protocols import unpack_floats, unpack_ids
from tests.test_cluster import ROOT, default_spec, finish, no_strays, up

pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(600)


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def check_trajectories(run: Path, max_version: int) -> None:
    """Every turn the hf agent made carries its token ids, logprobs and a valid version."""
    ids = set()
    for line in (run / "trajectories.jsonl").open():
        t = json.loads(line)
        assert t["id"] not in ids
        ids.add(t["id"])
        for turn in t["turns"]:  # bytes fields are base64 in JSON
            tokens = unpack_ids(base64.b64decode(turn["token_ids"]))
            logprobs = unpack_floats(base64.b64decode(turn["logprobs"]))
            assert tokens and len(tokens) == len(logprobs) and max(logprobs) <= 0.0
            assert 0 <= turn["policy_version"] <= max_version


def test_default_trains_then_resumes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spec = default_spec(tmp_path)
    out, err = finish(up(str(spec), "--run-dir", str(runs), "--steps", "3"), timeout=500)
    run = (runs / "latest").resolve()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["publish_failed"] == 0 and summary["aborted"] == 0
    assert summary["policy_version"] == 4  # the clone, then 3 steps
    assert json.loads((run / "demos.json").read_text())["steps"] == 3
    assert summary["learning"]["steps"] == 3
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    assert all(m["trajectories"] == 64 for m in metrics(run))
    assert (run / "checkpoints" / "latest.pt").exists()
    assert (run / "learning_curve.png").stat().st_size > 10_000
    baselines = json.loads((run / "baselines.json").read_text())
    assert baselines["heuristic"]["accuracy"] > baselines["random"]["accuracy"]
    assert "learner accuracy first -> last" in out and "learning curve" in out
    # the policy on the 300 held-out cases at step 0 and at the end, the baselines on the same
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    # before and after the clone, and at the end
    steps = [(e["step"], e["version"], e["n"]) for e in evals]
    assert steps == [(0, 0, 300), (0, 1, 300), (3, 4, 300)]
    assert baselines["heuristic"]["n"] == 300
    assert "demonstrator" not in baselines  # the default's is the clinician, measured already
    assert all(0.0 <= e["greedy"]["accuracy"] <= 1.0 for e in evals)  # and decoded greedily
    assert summary["learning"]["heldout"]["n"] == 300 and "held-out accuracy" in out
    check_trajectories(run, 4)
    no_strays(os.getpid())

    # --resume: same run directory, the broker replays its log, the learner its checkpoint.
    out, _ = finish(up(str(spec), "--run-dir", str(runs), "--resume", "--steps", "5"), timeout=500)
    assert (runs / "latest").resolve() == run
    lines = metrics(run)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]
    assert [m["version"] for m in lines] == [2, 3, 4, 5, 6]  # not cloned again
    assert lines[3]["elapsed_s"] >= lines[2]["elapsed_s"]
    assert json.loads((run / "summary.json").read_text())["policy_version"] == 6
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 0, 3, 5]  # resumed on schedule, then the end
    check_trajectories(run, 6)


def learner_process(head_pid: int) -> psutil.Process | None:
    for p in psutil.Process(head_pid).children(recursive=True):
        try:
            if "trainers.learner" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


def test_killed_learner_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = up(str(default_spec(tmp_path)), "--run-dir", str(runs), "--steps", "20")
    run = None
    while run is None or len(metrics(run)) < 11:  # past the checkpoint at step 10
        assert proc.poll() is None, proc.communicate()
        if (runs / "latest").exists():
            run = (runs / "latest").resolve()
        subprocess.run([sys.executable, "-c", "pass"], check=True)  # paces the loop
    learner = learner_process(proc.pid)
    assert learner is not None
    os.kill(learner.pid, signal.SIGKILL)
    finish(proc, timeout=500)
    steps = [m["step"] for m in metrics(run)]
    assert steps[-1] == 20
    restart = steps.index(11, steps.index(11) + 1)  # the resumed learner redid step 11 onward
    assert steps[restart:] == list(range(11, 21))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["policy_version"] == 21 and summary["publish_failed"] == 0
    assert "worker process died; restarting" in (run / "head.jsonl").read_text()


def test_the_multinode_training_spec_is_valid() -> None:
    """deploy/'s scaled-out spec decodes, its actors import and their configs fit (it binds a
    routable address, so it is not started here)."""
    import msgspec

    from engine.cluster import check_services
    from engine.spec import load_spec
    from trainers.learner import LearnerConfig

    spec = load_spec(Path(__file__).resolve().parent.parent / "deploy" / "train-multinode.toml")
    check_services(spec)
    assert spec.learner is not None
    config = msgspec.convert(spec.learner.config, LearnerConfig)
    assert config.policy.hidden == 256 and spec.services["agent"].workers == 4
    assert config.demos.enabled and config.demos.cases == 20000
    assert spec.learner.learners == 2 and spec.learner.groups_per_step % 2 == 0


@pytest.mark.parametrize("stop", ["down", "SIGINT"])
def test_down_stops_two_learner_ranks_with_a_checkpoint(tmp_path: Path, stop: str) -> None:
    """`engine.cluster down`, or Ctrl-C on `up`: the ranks finish their step and checkpoint."""
    import torch

    spec = default_spec(tmp_path, learners=2)
    runs = tmp_path / "runs"
    proc = up(str(spec), "--run-dir", str(runs), "--steps", "1000")
    run = None
    while run is None or len(metrics(run)) < 3:
        assert proc.poll() is None, proc.communicate()
        if (runs / "latest").exists():
            run = (runs / "latest").resolve()
        subprocess.run([sys.executable, "-c", "pass"], check=True)  # paces the loop
    if stop == "down":
        down = [sys.executable, "-m", "engine.cluster", "down", "--run-dir", str(runs)]
        subprocess.run(down, cwd=ROOT, check=True, capture_output=True, timeout=60)
    else:
        proc.send_signal(signal.SIGINT)
    out, _ = finish(proc, timeout=300)
    assert "learner accuracy first -> last" in out  # the summary, as after a finished run
    lines = metrics(run)
    assert [m["step"] for m in lines] == list(range(1, len(lines) + 1))
    assert all(m["trajectories"] == 64 for m in lines)  # the global batch, from rank 0 only
    saved = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    assert saved["steps"] == lines[-1]["step"]
    for log_file in ("learner.jsonl", "learner-1.jsonl"):
        records = [json.loads(x) for x in (run / log_file).read_text().splitlines()]
        (end,) = [r for r in records if r["event"] == "training finished"]
        assert end["stopped_by_signal"] and end["steps"] == lines[-1]["step"]
    assert "worker process died" not in (run / "head.jsonl").read_text()
    no_strays(os.getpid())
