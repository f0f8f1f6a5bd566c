"""A dxsim cluster for benchmarks: the hub in this trio run, actors in worker processes.

`instant_cluster(layout)` starts the hub (tcp loopback), one worker process per entry of `layout`
(each hosting the listed actors), waits until every service has a worker, and yields the hub and
a client that talks to the router directly, as the scheduler does in `engine.cluster`. Worker
processes are stopped with the same escalation as `engine.cluster down`.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import zmq

from engine.client import HubClient, local_client
from engine.hub import Hub
from engine.routing import RouterConfig
from engine.spec import Hosted
from engine.supervisor import Supervisor, worker_argv

INSTANT = {
    "agent": "benchmarks.instant:InstantAgent",
    "patient": "benchmarks.instant:InstantPatient",
    "examiner": "benchmarks.instant:InstantExaminer",
    "judge": "benchmarks.instant:InstantJudge",
}
PER_SERVICE = {f"{s}-0": [target] for s, target in INSTANT.items()}  # Ray's layout
COHOSTED = {"instant-0": list(INSTANT.values())}


@asynccontextmanager
async def instant_cluster(
    layout: dict[str, list[str]], *, capacity: int = 1024, ready_timeout_s: float = 60.0
) -> AsyncIterator[tuple[Hub, HubClient]]:
    services = {t.rpartition(":")[2] for targets in layout.values() for t in targets}
    ctx = zmq.Context()
    hub = Hub(["tcp://127.0.0.1:*"], ctx=ctx, config=RouterConfig(name="bench"))
    with tempfile.TemporaryDirectory(prefix="dxsim-bench-") as tmp:
        supervisor = Supervisor(Path(tmp), max_restarts=0)
        async with trio.open_nursery() as nursery:
            endpoint = (await nursery.start(hub.run))[0]
            await nursery.start(supervisor.run)
            for name, targets in layout.items():
                hosted = [Hosted(t, {}, capacity, f"{name}.{i}") for i, t in enumerate(targets)]
                argv = worker_argv(
                    sys.executable, endpoint, hosted, 1.0, Path(tmp) / f"{name}.jsonl", None
                )
                supervisor.add(name, argv)
            with trio.fail_after(ready_timeout_s):
                while len(hub.router.services()) < len(services):
                    await trio.sleep(0.02)
            try:
                yield hub, local_client(hub, nursery, "bench")
            finally:
                with trio.CancelScope(shield=True):
                    hub.shutdown_workers("benchmark over")
                    await supervisor.stop(grace_s=5.0)
                    nursery.cancel_scope.cancel()
    ctx.term()
