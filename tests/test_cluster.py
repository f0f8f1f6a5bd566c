"""The cluster as real processes over tcp loopback: `engine.cluster up` end to end, a worker
killed with SIGKILL mid-run, a rogue client, externally driven episodes, `status` and `down`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import psutil
import pytest
import zmq

from engine.client import SyncHubClient
from engine.cluster import read_head
from engine.env_client import EnvClient
from protocols import (
    AskPatient,
    Diagnose,
    OrderExam,
    Status,
    StatusQuery,
    Terminal,
    encode,
    encode_envelope,
)
from protocols.codec import Kind

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)

FAKE_SERVICES = """
[services.patient]
actor = "tests.cluster_actors:FakePatient"
[services.examiner]
actor = "tests.cluster_actors:FakeExaminer"
workers = 2
config = {{ delay_s = {delay} }}
[services.agent]
actor = "tests.cluster_actors:FakeAgent"
[services.judge]
actor = "tests.cluster_actors:FakeJudge"
"""


def fake_spec(tmp_path: Path, episodes: int, delay: float = 0.0, concurrency: int = 32) -> Path:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'run_dir = "{tmp_path / "runs"}"\n'
        f"[head]\nheartbeat_s = 0.5\n"
        f"[scheduler]\nepisodes = {episodes}\nconcurrency = {concurrency}\n"
        f'cases = "tests.cluster_actors:cases"\n'
        f"[rules]\nrequest_timeout_s = 5.0\n" + FAKE_SERVICES.format(delay=delay)
    )
    return spec


def default_spec(tmp_path: Path, learners: int = 1) -> Path:
    """The embedded default with a short cold start (64 demonstration cases, 3 updates) on the
    first 2,000 cases of its bank (quicker to build in each process): the clone still makes
    version 1, so version = steps + 1 below."""
    text = (ROOT / "engine" / "default.toml").read_text()
    text, n = re.subn(
        r"^(demos = .*)cases = \d+,(.*) }$", r"\1cases = 64,\2, steps = 3 }", text, flags=re.M
    )
    assert n == 1, "the default's demos line"
    text, n = re.subn(r"n = \d+, seed = 0 }", "n = 2000, seed = 0 }", text)
    assert n == 1, "the default's bank"
    if learners > 1:
        text = text.replace("groups_per_step = 8", f"groups_per_step = 8\nlearners = {learners}")
    spec = tmp_path / "default.toml"
    spec.write_text(text)
    return spec


def up(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cluster", "up", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_head(run_root: Path, proc: subprocess.Popen[str], timeout: float = 60) -> str:
    """The hub endpoint once the head has written it and answers status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            info = read_head(str(run_root))
        except Exception:  # noqa: BLE001 - not written yet
            info = None
        if info is not None:
            with SyncHubClient(info.endpoint, handshake_timeout=5) as client:
                status = client.request("hub", StatusQuery(), timeout=5)
                assert isinstance(status, Status)
                if {"patient", "examiner", "agent", "judge"} <= {w.service for w in status.workers}:
                    return info.endpoint
        subprocess.run([sys.executable, "-c", "pass"], check=True)  # let the head make progress
    raise AssertionError("cluster did not come up")


def episodes_done(endpoint: str) -> float:
    with SyncHubClient(endpoint, handshake_timeout=5) as client:
        status = client.request("head", StatusQuery(), timeout=5)
    assert isinstance(status, Status)
    return status.counters.get("episodes.episodes", 0.0)


def wait_until_done(endpoint: str, n: float, proc: subprocess.Popen[str] | psutil.Process) -> None:
    deadline = time.monotonic() + 120
    with SyncHubClient(endpoint, handshake_timeout=5) as client:
        while time.monotonic() < deadline:
            if isinstance(proc, psutil.Process):
                assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            else:
                assert proc.poll() is None
            status = client.request("head", StatusQuery(), timeout=5)
            if status.counters.get("episodes.episodes", 0.0) >= n:  # type: ignore[union-attr]
                return
            client.request("hub", StatusQuery(), timeout=5)  # paces the loop on a round trip
    raise AssertionError(f"fewer than {n} episodes done in time")


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    return out, err


def load_run(run_root: Path) -> tuple[dict, list[dict]]:
    run = run_root / "latest"
    summary = json.loads((run / "summary.json").read_text())
    trajectories = [json.loads(line) for line in (run / "trajectories.jsonl").open()]
    return summary, trajectories


def no_strays(pid: int) -> None:
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "engine.worker" in cmd and str(pid) != str(p.pid):
            try:
                parent = p.parent()
            except psutil.Error:
                continue
            assert parent is None or parent.pid != pid, f"stray worker {p.pid}: {cmd}"


def test_the_progress_line_says_what_the_learner_is_doing(tmp_path: Path) -> None:
    from engine.cluster import Head
    from engine.spec import load_spec

    spec = load_spec(ROOT / "engine" / "default.toml")
    assert spec.learner is not None
    head = Head(spec, tmp_path, hub=None)  # type: ignore[arg-type]
    assert head.progress_extra() == "  learner: cold start"  # the default clones first
    config = {k: v for k, v in spec.learner.config.items() if k != "demos"}
    plain = msgspec.structs.replace(
        spec, learner=msgspec.structs.replace(spec.learner, config=config)
    )
    assert Head(plain, tmp_path, hub=None).progress_extra() == "  learner: starting"  # type: ignore[arg-type]
    head.learner_version = 3
    head.recent.extend([True, False])
    assert head.progress_extra() == "  policy v3  acc(last 2) 0.500"


def test_up_runs_the_embedded_default(tmp_path: Path) -> None:
    """The default as `make run` starts it, with the short clone of `default_spec`."""
    proc = up(str(default_spec(tmp_path)), "--episodes", "500", "--run-dir", str(tmp_path / "runs"))
    out, _ = finish(proc)
    summary, trajectories = load_run(tmp_path / "runs")
    assert summary["episodes"] == 500
    assert summary["broker_received"] == 500 and summary["publish_failed"] == 0
    ids = [t["id"] for t in trajectories]
    assert len(ids) == 500 == len(set(ids))
    assert summary["aborted"] == 0
    assert "diagnosis accuracy" in out and "episodes/s" in out
    # Every trajectory ends in one terminal state and the judged ones carry their verdict.
    for t in trajectories:
        assert t["terminal"] in {x.value for x in Terminal}
        assert (t["verdict"] is None) == (t["terminal"] == "aborted")
    no_strays(proc.pid)


def test_killed_examiner_loses_no_episode(tmp_path: Path) -> None:
    n = 400
    proc = up(str(fake_spec(tmp_path, n, delay=0.05)))
    endpoint = wait_for_head(tmp_path / "runs", proc)
    wait_until_done(endpoint, 40, proc)
    victims = [
        p for p in psutil.Process(proc.pid).children() if "examiner-0" in " ".join(p.cmdline())
    ]
    assert len(victims) == 1
    os.kill(victims[0].pid, signal.SIGKILL)
    finish(proc)
    summary, trajectories = load_run(tmp_path / "runs")
    assert summary["episodes"] == n and summary["aborted"] == 0
    ids = [t["id"] for t in trajectories]
    assert len(ids) == n == len(set(ids)), "an episode was lost or published twice"
    assert summary["dead_workers"] >= 1
    assert summary["hub_retried"] >= 1, "the killed worker held no request: test did not bite"
    no_strays(proc.pid)


def test_rogue_client_does_not_disturb_the_run(tmp_path: Path) -> None:
    n = 300
    proc = up(str(fake_spec(tmp_path, n, delay=0.01)))
    endpoint = wait_for_head(tmp_path / "runs", proc)
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.DEALER)
    rogue.connect(endpoint)
    future = msgspec.msgpack.encode([999, 1, 1, "examiner"])
    garbage = [
        [b"\x00" * 10],
        [b"not msgpack", b"\xff\xfe"],
        [future, encode(AskPatient("hi"))],
        [encode_envelope(Kind.REQUEST, 1, "examiner"), b"\xc1\xc1"],
        [encode_envelope(Kind.REPLY, 12345), encode(AskPatient("fake reply"))],
        [encode_envelope(Kind.CONTROL), encode(AskPatient("not control"))],
        [encode_envelope(Kind.REQUEST, 2, "no-such-service"), encode(AskPatient("x"))],
        [b"a", b"b", b"c"],
    ]
    for _ in range(50):
        for frames in garbage:
            rogue.send_multipart(frames)
    answers = 0
    while answers < 6 * 50 and rogue.poll(10_000):
        answers += len(rogue.recv_multipart()) // 2  # replies to one peer come batched
    # Every bad message got an answer; the forged reply is dropped and the request for a
    # service nobody serves waits for a worker (NO_WORKER after the queue timeout).
    assert answers == 6 * 50
    rogue.close(0)
    ctx.term()
    finish(proc)
    summary, trajectories = load_run(tmp_path / "runs")
    assert summary["episodes"] == n and summary["aborted"] == 0
    assert len({t["id"] for t in trajectories}) == n


def test_env_client_status_and_down(tmp_path: Path) -> None:
    proc = up(str(fake_spec(tmp_path, 0, concurrency=4)))  # 0: run until `down`
    endpoint = wait_for_head(tmp_path / "runs", proc)
    with EnvClient(endpoint) as env:
        obs = env.reset(case_id="case-3")
        assert not obs.done and obs.intro.chief_complaint == "cough and fever"
        assert "cough and fever" in obs.text
        obs = env.step("<ask>Do you have a fever?</ask>")
        assert not obs.done and "Yes" in obs.text
        obs = env.step("this is not an action")
        assert not obs.done and obs.text  # format feedback, the episode goes on
        obs = env.step(OrderExam(["chest x-ray"]))
        assert not obs.done
        obs = env.step(Diagnose("pneumonia"))
        assert obs.done and obs.terminal is Terminal.DIAGNOSED
        assert obs.verdict is not None and obs.verdict.correct
        # An unknown case is a clear error, and the client stays usable.
        with pytest.raises(Exception, match="no case"):
            env.reset(case_id="nope")
        obs = env.reset()
        obs = env.close_episode()
        assert obs.done and obs.terminal is Terminal.ABORTED
    status = subprocess.run(
        [sys.executable, "-m", "engine.cluster", "status", "--run-dir", str(tmp_path / "runs")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "examiner" in status.stdout and "episodes done" in status.stdout
    down = subprocess.run(
        [sys.executable, "-m", "engine.cluster", "down", "--run-dir", str(tmp_path / "runs")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    finish(proc, timeout=60)
    summary, trajectories = load_run(tmp_path / "runs")
    assert summary["episodes"] == len(trajectories) and summary["publish_failed"] == 0
    env_runs = [t for t in trajectories if t["episode_id"].endswith("-env")]
    assert len(env_runs) == 2
    no_strays(proc.pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_as_down_does(tmp_path: Path, signum: int) -> None:
    proc = up(str(fake_spec(tmp_path, 0, concurrency=4)))  # 0: run until stopped
    endpoint = wait_for_head(tmp_path / "runs", proc)
    wait_until_done(endpoint, 20, proc)
    proc.send_signal(signum)
    out, err = finish(proc, timeout=60)
    assert f"{signal.Signals(signum).name}: stopping" in err
    summary, trajectories = load_run(tmp_path / "runs")
    assert summary["episodes"] == len(trajectories) >= 20  # running episodes finished
    assert summary["publish_failed"] == 0 and "episodes" in out
    assert not (tmp_path / "runs" / "latest" / "head.json").exists()
    no_strays(proc.pid)


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    # Every exam takes 60 s (past the request timeout), so a polite stop would wait for the
    # running episodes to time out; the second signal does not wait.
    proc = up(str(fake_spec(tmp_path, 0, delay=60.0, concurrency=4)))
    wait_for_head(tmp_path / "runs", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    for line in proc.stderr:  # the head says it is stopping before it waits for anything
        if "SIGTERM: stopping" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped at once by a second signal" in err
    assert not (tmp_path / "runs" / "latest" / "summary.json").exists()
    no_strays(proc.pid)


def test_up_outlives_the_shell_that_started_it(tmp_path: Path) -> None:
    """`up ... &` from a shell that then exits (a closed ssh session, a killed wrapper): the
    head is re-parented, and the services it hosts in process (broker, env, head control) go on
    serving; only worker processes stop when their own parent, the head, is gone."""
    spec = fake_spec(tmp_path, 0, delay=0.01, concurrency=4)  # 0: run until stopped
    shell = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -m engine.cluster up "{spec}" 2>"{tmp_path}/err" & wait'],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        endpoint = wait_for_head(tmp_path / "runs", shell)
        head = psutil.Process(read_head(str(tmp_path / "runs")).pid)
        before = episodes_done(endpoint)
        shell.kill()
        shell.wait(timeout=10)
        assert head.ppid() != shell.pid  # re-parented
        wait_until_done(endpoint, before + 200, head)  # the head's own services still answer
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
    finally:
        if shell.poll() is None:
            shell.kill()
        with contextlib.suppress(psutil.Error, NameError):
            head.kill()
    summary, trajectories = load_run(tmp_path / "runs")
    assert summary["episodes"] == len(trajectories) >= before + 200
    assert summary["publish_failed"] == 0
    assert "parent process gone" not in (tmp_path / "runs" / "latest" / "head.jsonl").read_text()


def test_worker_processes_stop_when_the_head_is_killed(tmp_path: Path) -> None:
    """The other half: a SIGKILLed head cannot say `Shutdown`, so each worker process notices
    that its parent is gone and exits instead of serving a hub that no longer exists."""
    proc = up(str(fake_spec(tmp_path, 0, concurrency=4)))
    wait_for_head(tmp_path / "runs", proc)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 5  # patient, 2 examiners, agent, judge
    proc.kill()
    proc.communicate(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=30)
    for p in alive:
        p.kill()
    assert not alive, f"workers outlived their head: {alive}"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("[scheduler]\n", "[scheduler]\nepisodez = 3\n", "unknown field `episodez`"),
        ("[head]\n", '[head]\nbind = "tcp://0.0.0.0:5555"\n', "CURVE"),
        ("tests.cluster_actors:FakeJudge", "actors.nope:Judge", "actors.nope"),
        ("tests.cluster_actors:FakeAgent", "tests.cluster_actors:cases", "not an engine.actor"),
        ("delay_s = 0.0", "delai_s = 0.0", "unknown field `delai_s`"),
        ("[rules]\n", "[rules]\nmax_turns = 0\n", "max_turns"),
        ("[rules]\n", '[rules]\ndialect = "klingon"\n', "klingon"),
        ("[rules]\n", "[rules\n", "not valid TOML"),
        ("[head]\n", "[learner]\nmax_staleness = -1\n[head]\n", "max_staleness"),
        ("[head]\n", "[learner]\ngroups_per_stepp = 2\n[head]\n", "groups_per_stepp"),
        (
            "[head]\n",
            "[learner]\nconfig = { policy = { layers = 3 } }\n[head]\n",
            "learner.config.policy differ",
        ),
    ],
)
def test_bad_specs_fail_clearly(tmp_path: Path, old: str, new: str, message: str) -> None:
    base = fake_spec(tmp_path, 5).read_text()
    assert old in base
    spec = tmp_path / "bad.toml"
    spec.write_text(base.replace(old, new, 1))
    proc = up(str(spec))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert message in err, err[-3000:]
    assert not (tmp_path / "runs").exists(), "a refused spec must not start anything"
