"""The hub: one ROUTER socket, the `Router` logic, and a clock. Binds; everyone else connects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
import trio
import zmq

from engine.routing import Router, RouterConfig
from engine.security import CurveKeys, apply_server, check_bind
from engine.transport import TrioSocket, make_socket
from protocols import WeightsAvailable, encode

log = structlog.get_logger("engine.hub")


class Hub:
    """Routes requests between clients and workers. `endpoints` may include `tcp://host:*`."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        ctx: zmq.Context[Any] | None = None,
        config: RouterConfig | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        for ep in endpoints:
            check_bind(ep, curve)
        self.ctx = ctx or zmq.Context.instance()
        self.router = Router(config, now=trio.current_time() if _in_trio() else 0.0)
        self.endpoints = list(endpoints)
        self.curve = curve
        self.bound: list[str] = []
        self._socket: TrioSocket | None = None
        self._local: dict[bytes, Callable[[list[bytes]], None]] = {}

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled. `task_status.started` receives the bound endpoints."""
        sock = make_socket(self.ctx, zmq.ROUTER)
        if self.curve is not None:
            apply_server(sock, self.curve)
        try:
            for ep in self.endpoints:
                sock.bind(ep)
                self.bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise OSError(f"hub cannot bind {self.endpoints}: {exc}") from None
        router = self.router
        router.started = trio.current_time()
        wrapped = TrioSocket(sock, self._on_message, name="hub", on_unreachable=self._unreachable)
        self._socket = wrapped
        log.info("hub listening", endpoints=self.bound)
        async with trio.open_nursery() as nursery:
            await nursery.start(wrapped.run)
            nursery.start_soon(self._clock)
            task_status.started(list(self.bound))

    def attach_local(
        self, identity: bytes, deliver: Callable[[list[bytes]], None]
    ) -> Callable[[list[bytes]], None]:
        """Connect an in-process peer: it gets frames addressed to `identity` through `deliver`
        and sends by the returned function, with no socket in between."""
        self._local[identity] = deliver

        def send(frames: list[bytes]) -> None:
            self._send(self.router.on_frames(identity, frames, trio.current_time()))

        return send

    def shutdown_workers(self, reason: str) -> None:
        self._send(self.router.shutdown_all(reason))

    def broadcast_weights(self, notice: WeightsAvailable) -> None:
        """Tell every worker (and each one that joins later) that new weights are served."""
        self._send(self.router.broadcast_weights(encode(notice)))

    def _on_message(self, frames: list[bytes]) -> None:
        out = self.router.on_frames(frames[0], frames[1:], trio.current_time())
        self._send(out)

    def _unreachable(self, frames: list[bytes]) -> None:
        self._send(self.router.on_unreachable(frames[0], trio.current_time()))

    def _send(self, out: list[tuple[bytes, list[bytes]]]) -> None:
        assert self._socket is not None
        send = self._socket.send
        local = self._local
        for identity, frames in out:
            deliver = local.get(identity) if local else None
            if deliver is not None:
                deliver(frames)
            else:
                send([identity, *frames])

    async def _clock(self) -> None:
        period = self.router.config.heartbeat_s / 2
        while True:
            await trio.sleep(period)
            self._send(self.router.tick(trio.current_time()))


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
