"""Ray baseline: the instant 6-turn episode written with Ray async actor calls.

One Ray async actor per service wraps the same `benchmarks.instant` actor; its `handle(request)`
dispatches to the actor's `@handles` handler. The driver plays `run_episode_logic` under asyncio,
awaiting `actor.handle.remote(request)` for each of the 12 calls. Requests and replies are the
msgspec Structs themselves (Ray pickles them; msgspec Structs pickle natively).

Rows (benchmark `ray_episodes`):
- `episodes_serial`  episodes/s, one episode at a time
- `episodes_c256`    episodes/s, 256 episodes in flight (semaphore + one asyncio task per episode)
- `episodes_serial_msgpack`, `episodes_c256_msgpack`
                     the same, but requests and replies cross Ray as `protocols.codec` msgpack
                     bytes (`handle_bytes`). Ray's pickling of nested Structs is expensive (about
                     as much as the call itself), so this is what "Ray + msgspec" does.
                     Informational: the targets compare against the Struct rows.
- `call_serial`      calls/s, a no-op actor method, `ray.get` one call at a time (sanity line)
- `call_pipelined`   calls/s, the same method, batches of 1,000 submitted then `ray.get` together

Ray is kept on loopback: usage stats off, no dashboard, and the node address pinned to 127.0.0.1.
(Ray 2.60 rewrites a loopback `_node_ip_address` to the machine's routable address, and its gRPC
servers then listen on every interface. We keep the loopback address by replacing
`ray._private.services.resolve_ip_for_localhost`, and check every listening socket of the
session's processes before measuring: a non-loopback listener aborts the benchmark.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.common import (
    Context,
    Row,
    closed_loop_asyncio,
    episode_window,
    log,
    logged,
    timed_rate,
)
from benchmarks.instant import (
    InstantAgent,
    InstantExaminer,
    InstantJudge,
    InstantPatient,
    run_episode_logic,
)

__all__ = ["RaySession", "bench", "ray_session"]

_ROOT = str(Path(__file__).resolve().parent.parent)
_INSTANT = (InstantAgent, InstantPatient, InstantExaminer, InstantJudge)


class RaySession(msgspec.Struct):
    handles: dict[str, Any]  # service -> ActorHandle of ServiceActor
    echo: Any  # ActorHandle of EchoActor


def _actor_classes() -> tuple[Any, Any]:
    import ray

    from protocols import decode, encode

    @ray.remote(num_cpus=0)
    class ServiceActor:
        """Hosts one instant actor; `handle` dispatches by request type, as a dxsim worker does."""

        def __init__(self, actor_cls: type) -> None:
            self._table = actor_cls().handlers()

        async def handle(self, request: Any) -> Any:
            return self._table[type(request)](request)

        async def handle_bytes(self, data: bytes) -> bytes:
            request = decode(data)
            return encode(self._table[type(request)](request))

    @ray.remote(num_cpus=0)
    class EchoActor:
        def ping(self, x: int) -> int:
            return x

    return ServiceActor, EchoActor


def _non_loopback_listeners() -> list[str]:
    import psutil

    bad: list[str] = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                if conn.status != psutil.CONN_LISTEN:
                    continue
                ip = ipaddress.ip_address(conn.laddr.ip.removeprefix("::ffff:"))
                if not ip.is_loopback:
                    bad.append(f"{proc.name()}[{proc.pid}] {conn.laddr.ip}:{conn.laddr.port}")
    return bad


@contextlib.contextmanager
def ray_session() -> Iterator[RaySession]:
    """A local 2-CPU Ray instance on loopback with one actor per service; shut down on exit."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers must import `benchmarks`, `engine` and `protocols` to unpickle actors and messages.
    path = os.environ.get("PYTHONPATH", "")
    if _ROOT not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, path) if p)

    import ray
    import ray._private.services as services

    # Keep the node on loopback (see the module docstring).
    services.resolve_ip_for_localhost = lambda host: host
    with logged("ray.init"):
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        exposed = _non_loopback_listeners()
        if exposed:
            raise RuntimeError(f"Ray listens on non-loopback addresses: {exposed}")
        service_actor, echo_actor = _actor_classes()
        handles = {cls.service: service_actor.remote(cls) for cls in _INSTANT}
        echo = echo_actor.remote()
        ray.get([h.__ray_ready__.remote() for h in (*handles.values(), echo)])
        exposed = _non_loopback_listeners()
        if exposed:
            raise RuntimeError(f"Ray workers listen on non-loopback addresses: {exposed}")
        yield RaySession(handles, echo)
    finally:
        with logged("ray.shutdown"):
            ray.shutdown()


def _make_call(session: RaySession, wire: str = "struct") -> Any:
    """`call` over Ray: Structs pickled by Ray (`struct`) or msgpack bytes (`msgpack`)."""
    from protocols import decode, encode

    handles = session.handles

    async def call(service: str, request: Any) -> Any:
        return await handles[service].handle.remote(request)

    async def call_bytes(service: str, request: Any) -> Any:
        return decode(await handles[service].handle_bytes.remote(encode(request)))

    return call if wire == "struct" else call_bytes


async def _episodes(ctx: Context, session: RaySession, concurrency: int, wire: str = "struct"):
    call = _make_call(session, wire)
    warmup_s, measure_s = episode_window(ctx, concurrency)

    async def play(i: int) -> None:
        await run_episode_logic(call, episode_id=f"ray-{i}")

    return await closed_loop_asyncio(
        play, concurrency=concurrency, warmup_s=warmup_s, measure_s=measure_s
    )


def bench(ctx: Context) -> list[Row]:
    import ray

    session = ctx.resource("ray", ray_session)
    name = "ray_episodes"
    rows: list[Row] = []

    serial = asyncio.run(
        _episodes(ctx, session, 1),
    )
    rows.append(Row(name, "episodes_serial", serial.rate, "episodes/s", "1 in flight"))
    log.info("ray episodes serial: %.1f/s (%d)", serial.rate, serial.completed)

    serial_packed = asyncio.run(
        _episodes(ctx, session, 1, wire="msgpack"),
    )
    rows.append(
        Row(
            name,
            "episodes_serial_msgpack",
            serial_packed.rate,
            "episodes/s",
            "1 in flight, msgpack bytes",
        )
    )
    log.info("ray episodes serial, msgpack bytes: %.1f/s", serial_packed.rate)

    concurrent = asyncio.run(
        _episodes(ctx, session, 256),
    )
    rows.append(Row(name, "episodes_c256", concurrent.rate, "episodes/s", "256 in flight"))
    log.info("ray episodes c256: %.1f/s (%d)", concurrent.rate, concurrent.completed)

    packed = asyncio.run(
        _episodes(ctx, session, 256, wire="msgpack"),
    )
    rows.append(
        Row(
            name, "episodes_c256_msgpack", packed.rate, "episodes/s", "256 in flight, msgpack bytes"
        )
    )
    log.info("ray episodes c256, msgpack bytes: %.1f/s (%d)", packed.rate, packed.completed)

    echo = session.echo
    seconds = ctx.scale(2.0, 0.3)
    for _ in range(50):  # warm-up
        ray.get(echo.ping.remote(0))
    call_serial = timed_rate(lambda: ray.get(echo.ping.remote(0)), seconds)
    rows.append(Row(name, "call_serial", call_serial.rate, "calls/s", "ray.get per call"))

    batch = 1000

    def pipelined() -> None:
        ray.get([echo.ping.remote(i) for i in range(batch)])

    pipelined()  # warm-up
    call_pipelined = timed_rate(pipelined, seconds, batch=batch)
    rows.append(Row(name, "call_pipelined", call_pipelined.rate, "calls/s", "batches of 1000"))
    log.info("ray calls: serial %.0f/s, pipelined %.0f/s", call_serial.rate, call_pipelined.rate)
    return rows


if __name__ == "__main__":  # python -m benchmarks.ray_episodes [--quick]: one round, no runner
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    with Context(quick="--quick" in sys.argv) as c:
        t = time.perf_counter()
        for r in bench(c):
            log.info("%-16s %-16s %12.1f %s", r.benchmark, r.metric, r.value, r.unit)
        log.info("%.1f s", time.perf_counter() - t)
