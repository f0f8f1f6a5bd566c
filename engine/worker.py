"""A worker: hosts one actor instance and serves its service's requests from the hub.

Run in-process with `serve()` or as a process hosting one or more actors:
`python -m engine.worker --hub ENDPOINT --actors '[{"actor": "actors.judge:RulesJudge"}]'`.
The worker repeats
`Ready` every heartbeat period (that is its heartbeat; it carries the actor's policy version, and
is sent again as soon as a `WeightsAvailable` notice has been handled by `actor.on_weights`, one
update at a time, the newest pending notice next), answers each request with the same id,
turns handler failures into `Error` replies, and exits on `Shutdown`, when the hub has been silent
for too long after a shutdown was requested, or when its parent process is gone.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
import trio
import zmq

from engine.actor import Actor, ActorError, ConfigError, is_async
from engine.logs import configure_logging
from engine.security import CurveKeys, apply_client
from engine.spec import Hosted
from engine.transport import SocketClosed, TrioSocket, make_socket
from protocols import (
    Error,
    ErrorCode,
    Kind,
    ProtocolError,
    Ready,
    Shutdown,
    WeightsAvailable,
    check_pairs,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
)

log = structlog.get_logger("engine.worker")


def resolve(target: str) -> Any:
    """Import `"package.module:attribute"`; a bad string is a `ConfigError` naming it."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{target!r} is not an import string of the form 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} (from {target!r}): {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{module_name!r} has no attribute {attr!r} (from {target!r})") from None


def build_actor(target: str, config: dict[str, Any] | None) -> Actor:
    cls = resolve(target)
    if not (isinstance(cls, type) and issubclass(cls, Actor)):
        raise ConfigError(f"{target!r} is not an engine.actor.Actor subclass")
    return cls.from_config(config)


class Worker:
    def __init__(
        self,
        actor: Actor,
        name: str,
        capacity: int,
        heartbeat_s: float,
        watch_parent: bool = False,
    ) -> None:
        self.actor = actor
        self.watch_parent = watch_parent
        self.name = name
        self.capacity = capacity
        self.heartbeat_s = heartbeat_s
        self.handlers = actor.handlers()
        self.served = 0
        self.failed = 0
        self._socket: TrioSocket | None = None
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._weights_running = False
        self._weights_next: WeightsAvailable | None = None  # the newest notice not yet started

    def _send_ready(self) -> None:
        """Ready is the heartbeat; encoded fresh so it carries the current policy version."""
        assert self._socket is not None
        ready = Ready(self.actor.service, self.capacity, self.name, self.actor.policy_version)
        self._socket.send([encode_envelope(Kind.CONTROL), encode(ready)])

    def _reply(self, msg_id: int, body: bytes) -> None:
        assert self._socket is not None
        try:
            self._socket.send([encode_envelope(Kind.REPLY, msg_id), body])
        except SocketClosed:  # a handler finished after shutdown: the hub re-sends its request
            log.info("reply after the socket closed dropped", worker=self.name, msg_id=msg_id)

    def _on_message(self, frames: list[bytes]) -> None:
        try:
            check_pairs(frames)
        except ProtocolError as exc:
            log.warning("malformed message from hub", worker=self.name, error=str(exc))
            return
        for i in range(0, len(frames), 2):
            try:
                env = decode_envelope(frames[i])
            except ProtocolError as exc:
                log.warning("undecodable frame from hub", worker=self.name, error=str(exc))
                continue
            if env.kind is Kind.REQUEST:
                self._on_request(env.id, frames[i + 1])
            elif env.kind is Kind.CONTROL:
                self._on_control(frames[i + 1])

    def _on_control(self, body: bytes) -> None:
        try:
            msg = decode(body)
        except ProtocolError:
            return
        if isinstance(msg, Shutdown):
            log.info("shutdown requested", worker=self.name, reason=msg.reason)
            self._stop.set()
        elif isinstance(msg, WeightsAvailable):
            self._on_weights(msg)
        elif isinstance(msg, Error):
            log.warning("hub error", worker=self.name, code=msg.code.name, error=msg.message)

    def _on_weights(self, msg: WeightsAvailable) -> None:
        """Start `actor.on_weights`, one at a time: notices arriving meanwhile are coalesced and
        only the newest runs next."""
        nxt = self._weights_next
        if nxt is None or msg.version > nxt.version:
            self._weights_next = msg
        if not self._weights_running and self._nursery is not None:
            self._weights_running = True
            self._nursery.start_soon(self._apply_weights)

    async def _apply_weights(self) -> None:
        try:
            while self._weights_next is not None:
                msg, self._weights_next = self._weights_next, None
                if msg.version <= self.actor.policy_version:
                    continue  # already serving it (a re-sent notice)
                log.info("applying weights", worker=self.name, version=msg.version)
                try:
                    await self.actor.on_weights(msg)
                except Exception:  # noqa: BLE001 - a failed update leaves the old weights serving
                    log.exception("on_weights failed", worker=self.name, version=msg.version)
                self._send_ready()
        finally:
            self._weights_running = False

    def _on_request(self, msg_id: int, body: bytes) -> None:
        try:
            request = decode(body)
        except ProtocolError as exc:
            self._reply(msg_id, encode(Error(ErrorCode.BAD_MESSAGE, str(exc))))
            return
        handler = self.handlers.get(type(request))
        if handler is None:
            error = Error(
                ErrorCode.BAD_REQUEST,
                f"service {self.actor.service!r} does not handle {type(request).__name__}",
            )
            self._reply(msg_id, encode(error))
            return
        if is_async(handler):
            assert self._nursery is not None
            self._nursery.start_soon(self._run_async, handler, request, msg_id)
            return
        try:
            reply = handler(request)
        except Exception as exc:  # noqa: BLE001 - a handler failure is an Error reply
            self._reply(msg_id, encode(self._failure(exc, request)))
            return
        self.served += 1
        self._reply(msg_id, encode(reply))

    async def _run_async(self, handler: Callable[[Any], Any], request: Any, msg_id: int) -> None:
        try:
            reply = await handler(request)
        except Exception as exc:  # noqa: BLE001
            self._reply(msg_id, encode(self._failure(exc, request)))
            return
        self.served += 1
        self._reply(msg_id, encode(reply))

    def _failure(self, exc: Exception, request: Any) -> Error:
        self.failed += 1
        if isinstance(exc, ActorError):
            return Error(exc.code, exc.message)
        log.exception("handler failed", worker=self.name, request=type(request).__name__)
        return Error(ErrorCode.WORKER_FAILED, f"{self.name}: {type(exc).__name__}: {exc}")

    async def _heartbeat(self) -> None:
        parent = os.getppid()
        while True:
            self._send_ready()
            await trio.sleep(self.heartbeat_s)
            if self.watch_parent and os.getppid() != parent:
                log.warning("parent process gone; stopping", worker=self.name)
                self._stop.set()

    def stop(self) -> None:
        self._stop.set()


async def serve(
    actor: Actor,
    endpoint: str,
    *,
    name: str | None = None,
    capacity: int = 64,
    ctx: zmq.Context[Any] | None = None,
    curve: CurveKeys | None = None,
    heartbeat_s: float = 1.0,
    watch_parent: bool = False,
    task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `actor` until `Shutdown` or cancellation; with `watch_parent` (a worker process
    started by the head) also once this process's parent is gone. Services the head hosts in
    its own process must not watch: their parent is whatever started `up` (a shell that may
    exit while the run goes on)."""
    name = name or f"{actor.service}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    structlog.contextvars.bind_contextvars(worker=name, service=actor.service)
    await actor.start()
    # A fresh identity per incarnation: a restarted worker must not inherit the requests its
    # killed predecessor held; the hub re-sends those once the old identity misses its beats.
    identity = f"{name}/{uuid.uuid4().hex[:8]}".encode()
    sock = make_socket(ctx or zmq.Context.instance(), zmq.DEALER, identity=identity)
    if curve is not None:
        apply_client(sock, curve)
    sock.connect(endpoint)
    worker = Worker(actor, name, capacity, heartbeat_s, watch_parent)
    worker._socket = TrioSocket(sock, worker._on_message, name=name)
    try:
        async with trio.open_nursery() as nursery:
            worker._nursery = nursery
            await nursery.start(worker._socket.run)
            nursery.start_soon(worker._heartbeat)
            nursery.start_soon(actor.run)
            log.info("worker started", endpoint=endpoint, capacity=capacity)
            task_status.started(worker)
            await worker._stop.wait()
            # Say goodbye so the hub re-routes at once instead of after the heartbeat window.
            worker._socket.send(
                [encode_envelope(Kind.CONTROL), encode(Shutdown("worker stopping"))]
            )
            with trio.move_on_after(0.5):
                while worker._socket.backlog:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        await actor.close()
        log.info("worker stopped", served=worker.served, failed=worker.failed)


async def serve_all(hosted: list[tuple[Actor, Hosted]], endpoint: str, **kwargs: Any) -> None:
    """Several actors in one process, each with its own socket; one stopping stops them all."""
    async with trio.open_nursery() as nursery:
        for actor, h in hosted:
            nursery.start_soon(
                lambda a=actor, h=h: _serve_then_cancel(a, endpoint, h, nursery, kwargs)
            )


async def _serve_then_cancel(
    actor: Actor, endpoint: str, h: Hosted, nursery: trio.Nursery, kwargs: dict[str, Any]
) -> None:
    await serve(actor, endpoint, name=h.name or None, capacity=h.capacity, **kwargs)
    nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.worker", description=__doc__)
    parser.add_argument("--hub", required=True, help="hub endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument(
        "--actors",
        required=True,
        help='JSON list of {"actor": "module:Class", "config": {}, "capacity": 64, "name": ""}',
    )
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--curve-dir", default=None, help="directory of CURVE keys")
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args(argv)
    configure_logging(args.log_file, console_level="warning")
    try:
        hosted = msgspec.json.decode(args.actors.encode(), type=list[Hosted])
        actors = [(build_actor(h.actor, h.config), h) for h in hosted]
    except (ConfigError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        sys.stderr.write(f"engine.worker: {exc}\n")
        return 2
    curve = CurveKeys(args.curve_dir) if args.curve_dir else None
    trio.run(
        lambda: serve_all(
            actors, args.hub, curve=curve, heartbeat_s=args.heartbeat, watch_parent=True
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
