"""Worker processes: start them, restart the ones that die, and stop them all with escalation.

Stopping asks politely first (the hub sends `Shutdown`), then waits, then SIGTERM, then SIGKILL,
so `down` and a failing `up` leave no stray process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

log = structlog.get_logger("engine.supervisor")


@dataclass
class WorkerProcess:
    name: str
    argv: list[str]
    log_dir: Path
    process: trio.Process | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stderr_tail(self, lines: int = 20) -> str:
        path = self.log_dir / f"{self.name}.stderr"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    def __init__(self, log_dir: Path, *, max_restarts: int = 5) -> None:
        self.log_dir = log_dir
        self.max_restarts = max_restarts
        self.workers: list[WorkerProcess] = []
        self.stopping = False
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def add(self, name: str, argv: list[str]) -> WorkerProcess:
        assert self._nursery is not None, "Supervisor.run must be started first"
        worker = WorkerProcess(name, argv, self.log_dir)
        self.workers.append(worker)
        self._nursery.start_soon(self._keep, worker)
        return worker

    async def _keep(self, worker: WorkerProcess) -> None:
        while True:
            stderr = open(self.log_dir / f"{worker.name}.stderr", "ab")  # noqa: SIM115
            try:
                worker.process = await trio.lowlevel.open_process(
                    worker.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    env=_worker_env(),
                )
            finally:
                stderr.close()
            log.info("worker process started", worker=worker.name, pid=worker.process.pid)
            code = await worker.process.wait()
            worker.exits.append(code)
            if self.stopping:
                return
            if code == 0:  # a clean exit is a decision (a learner that finished), not a crash
                log.info("worker process exited cleanly", worker=worker.name)
                return
            if worker.restarts >= self.max_restarts:
                log.error("worker keeps dying; not restarting", worker=worker.name, code=code)
                return
            worker.restarts += 1
            log.warning("worker process died; restarting", worker=worker.name, code=code)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Callers have already asked the workers to stop; wait, then terminate, then kill."""
        self.stopping = True
        live = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for sig, wait in ((None, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            live = [p for p in live if p.returncode is None]
            if not live:
                break
            if sig is not None:
                for p in live:
                    _signal(p, sig)
            with trio.move_on_after(wait):
                for p in live:
                    await p.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


def _signal(process: trio.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass


def _worker_env() -> dict[str, str]:
    """The workers import the same code as the head, installed or not."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": root + (os.pathsep + path if path else ""),
    }


def worker_argv(
    python_exe: str,
    hub: str,
    hosted: list[Any],
    heartbeat_s: float,
    log_file: Path,
    curve_dir: str | None,
) -> list[str]:
    """The command line of one worker process hosting `hosted` (engine.worker.Hosted)."""
    import msgspec

    argv = [
        python_exe,
        "-m",
        "engine.worker",
        "--hub",
        hub,
        "--actors",
        msgspec.json.encode(hosted).decode(),
        "--heartbeat",
        str(heartbeat_s),
        "--log-file",
        str(log_file),
    ]
    if curve_dir:
        argv += ["--curve-dir", curve_dir]
    return argv
