"""Talking to the hub from outside a worker: the async `HubClient` and the blocking `SyncHubClient`.

Both speak the same protocol: a `Hello`/`Welcome` handshake (a peer of another protocol version
gets an error naming both versions), requests with ids, heartbeats both ways. A hub silent for
`misses` heartbeat periods fails every waiting request with `HubUnreachable` instead of letting it
hang. These are what other trainers embed; they import nothing heavy.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog
import trio
import zmq

from engine.security import CurveKeys, apply_client
from engine.transport import TrioSocket, make_socket
from protocols import (
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    Kind,
    Message,
    ProtocolError,
    Welcome,
    check_pairs,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
)

if TYPE_CHECKING:
    from engine.hub import Hub

log = structlog.get_logger("engine.client")


class RemoteError(Exception):
    """The far side answered with an `Error`."""

    def __init__(self, code: ErrorCode, message: str, service: str = "") -> None:
        where = f"{service}: " if service else ""
        super().__init__(f"{where}{code.name}: {message}")
        self.code = code
        self.message = message
        self.service = service


class HubUnreachable(ConnectionError):
    """No word from the hub within the heartbeat window (or the handshake timed out)."""


class RequestTimeout(TimeoutError):
    pass


def _raise_if_error(msg: Message, service: str) -> Message:
    if isinstance(msg, Error):
        raise RemoteError(msg.code, msg.message, service)
    return msg


class _Slot:
    """One waiting request: the parked task, and what woke it."""

    __slots__ = ("task", "body", "failure", "deadline", "event")

    def __init__(self, deadline: float = math.inf) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.body: bytes | None = None
        self.failure: BaseException | None = None
        self.deadline = deadline
        self.event: trio.Event | None = None  # only for the handshake

    def wake(self) -> None:
        if self.task is not None:
            task, self.task = self.task, None
            trio.lowlevel.reschedule(task)
        elif self.event is not None:
            self.event.set()


class HubClient:
    """Async client; create with `connect()`. Safe to share between many tasks."""

    def __init__(self, name: str, heartbeat_s: float, misses: int) -> None:
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.misses = misses
        self._ids = itertools.count(1)
        self._slots: dict[int, _Slot] = {}
        self._send: Callable[[list[bytes]], None] | None = None  # a socket owner's, or the hub's
        self._handshake = _Slot()
        self._handshake.event = trio.Event()
        self._deadlines: list[tuple[float, int]] = []
        self._next_sweep = math.inf
        self._sweep_scope: trio.CancelScope | None = None
        self._last_heard = trio.current_time()
        self.hub_dead = False

    async def request(self, service: str, body: Any, *, timeout: float = 10.0) -> Message:
        """Send `body` to `service`; return the decoded reply or raise.

        Raises `RemoteError` for an `Error` reply, `RequestTimeout` after `timeout` seconds,
        `HubUnreachable` when the hub goes silent, `ProtocolError` for an undecodable reply.
        """
        if self.hub_dead:
            raise HubUnreachable(f"hub silent for over {self.misses} heartbeats")
        assert self._send is not None
        msg_id = next(self._ids)
        slot = _Slot(trio.current_time() + timeout)
        slot.task = trio.lowlevel.current_task()
        self._slots[msg_id] = slot
        heapq.heappush(self._deadlines, (slot.deadline, msg_id))
        if slot.deadline < self._next_sweep:
            self._wake_sweeper()
        self._send([encode_envelope(Kind.REQUEST, msg_id, service), encode(body)])

        def abort(_: Any) -> trio.lowlevel.Abort:
            slot.task = None
            self._slots.pop(msg_id, None)
            return trio.lowlevel.Abort.SUCCEEDED

        # The cheapest park trio has: woken by the reply, a failure or the deadline sweeper.
        await trio.lowlevel.wait_task_rescheduled(abort)
        if slot.failure is not None:
            raise slot.failure
        if slot.body is None:
            raise RequestTimeout(f"{service}: no reply within {timeout:g} s")
        return _raise_if_error(decode(slot.body), service)

    async def _sweep(self) -> None:
        """Fail requests whose deadline has passed (one timer for all, not one per request)."""
        heap = self._deadlines
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, msg_id = heapq.heappop(heap)
                slot = self._slots.get(msg_id)
                if slot is not None and slot.deadline <= now:
                    del self._slots[msg_id]
                    slot.wake()  # body None: a timeout
            if len(heap) > 2 * len(self._slots) + 1024:  # drop entries of answered requests
                self._deadlines = heap = [(d, i) for d, i in heap if i in self._slots]
                heapq.heapify(heap)
            self._next_sweep = heap[0][0] if heap else math.inf
            with trio.move_on_at(self._next_sweep) as scope:
                self._sweep_scope = scope
                await trio.sleep_forever()
            self._sweep_scope = None

    def _wake_sweeper(self) -> None:
        if self._sweep_scope is not None:
            self._sweep_scope.cancel()

    def _on_message(self, frames: list[bytes]) -> None:
        self._last_heard = trio.current_time()
        if self.hub_dead:
            self.hub_dead = False
            log.info("hub is back", client=self.name)
        try:
            check_pairs(frames)
        except ProtocolError as exc:
            log.warning("dropping malformed message from hub", client=self.name, error=str(exc))
            return
        for i in range(0, len(frames), 2):
            self._on_pair(frames[i], frames[i + 1])

    def _on_pair(self, header: bytes, body: bytes) -> None:
        try:
            env = decode_envelope(header)
        except ProtocolError as exc:
            log.warning("dropping undecodable frame from hub", client=self.name, error=str(exc))
            return
        if env.kind is Kind.REPLY:
            slot = self._slots.pop(env.id, None)
            if slot is not None:
                slot.body = body
                slot.wake()
        elif env.kind is Kind.CONTROL and self._handshake.body is None:
            self._handshake.body = body
            self._handshake.wake()
        elif env.kind is Kind.CONTROL:
            try:
                msg = decode(body)
            except ProtocolError:
                return
            if isinstance(msg, Error):
                log.warning("hub error", client=self.name, code=msg.code.name, error=msg.message)

    async def _heartbeat(self) -> None:
        assert self._send is not None
        beat = [encode_envelope(Kind.CONTROL), encode(Heartbeat())]
        while True:
            self._send(list(beat))
            await trio.sleep(self.heartbeat_s)
            silent = trio.current_time() - self._last_heard
            if silent > self.heartbeat_s * self.misses and not self.hub_dead:
                self.hub_dead = True
                log.warning("hub unreachable", client=self.name, silent_s=round(silent, 2))
                failure = HubUnreachable(f"hub silent for {silent:.1f} s")
                slots, self._slots = self._slots, {}
                for slot in slots.values():
                    slot.failure = failure
                    slot.wake()


@asynccontextmanager
async def connect(
    endpoint: str,
    *,
    name: str | None = None,
    ctx: zmq.Context[Any] | None = None,
    curve: CurveKeys | None = None,
    heartbeat_s: float = 1.0,
    misses: int = 3,
    handshake_timeout: float = 10.0,
) -> AsyncIterator[HubClient]:
    """Connect, shake hands, and yield a `HubClient`; everything stops when the block exits."""
    name = name or f"client-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    sock = make_socket(ctx or zmq.Context.instance(), zmq.DEALER, identity=name.encode())
    if curve is not None:
        apply_client(sock, curve)
    sock.connect(endpoint)
    client = HubClient(name, heartbeat_s, misses)
    socket = TrioSocket(sock, client._on_message, name=name)
    client._send = socket.send
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(socket.run)
            client._send([encode_envelope(Kind.CONTROL, 1), encode(Hello(name=name))])
            with trio.move_on_after(handshake_timeout):
                await client._handshake.event.wait()  # type: ignore[union-attr]
            if client._handshake.body is None:
                raise HubUnreachable(
                    f"no answer from hub at {endpoint} within {handshake_timeout:g} s"
                )
            welcome = _raise_if_error(decode(client._handshake.body), "hub")
            if not isinstance(welcome, Welcome):
                raise ProtocolError(f"expected Welcome from hub, got {type(welcome).__name__}")
            client.heartbeat_s = welcome.heartbeat_s
            nursery.start_soon(client._heartbeat)
            nursery.start_soon(client._sweep)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Our own tasks only ever end by cancellation: a lone error is the caller's or the
        # handshake's, and is re-raised as itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def local_client(hub: Hub, nursery: trio.Nursery, name: str = "local") -> HubClient:
    """A client inside the hub's own process and trio run: frames go straight into the router,
    with no socket and no heartbeat (the hub cannot die without this process)."""
    client = HubClient(name, hub.router.config.heartbeat_s, misses=1 << 30)
    identity = f"local:{name}".encode()
    client._send = hub.attach_local(identity, client._on_message)
    client._handshake.body = b""
    nursery.start_soon(client._sweep)
    return client


class SyncHubClient:
    """Blocking client for code without an event loop (scripts, gym envs, other trainers)."""

    def __init__(
        self,
        endpoint: str,
        *,
        name: str | None = None,
        ctx: zmq.Context[Any] | None = None,
        curve: CurveKeys | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.name = name or f"sync-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._sock = make_socket(
            ctx or zmq.Context.instance(), zmq.DEALER, identity=self.name.encode()
        )
        if curve is not None:
            apply_client(self._sock, curve)
        self._sock.connect(endpoint)
        self._ids = itertools.count(2)
        self._sock.send_multipart([encode_envelope(Kind.CONTROL, 1), encode(Hello(name=self.name))])
        frames = self._recv_until(lambda env: env.kind is Kind.CONTROL, handshake_timeout)
        if frames is None:
            self.close()
            raise HubUnreachable(f"no answer from hub at {endpoint} within {handshake_timeout:g} s")
        try:
            welcome = _raise_if_error(decode(frames[1]), "hub")
        except Exception:
            self.close()
            raise
        if not isinstance(welcome, Welcome):
            self.close()
            raise ProtocolError(f"expected Welcome from hub, got {type(welcome).__name__}")

    def request(self, service: str, body: Any, *, timeout: float = 10.0) -> Message:
        msg_id = next(self._ids)
        self._sock.send_multipart([encode_envelope(Kind.REQUEST, msg_id, service), encode(body)])
        frames = self._recv_until(lambda env: env.kind is Kind.REPLY and env.id == msg_id, timeout)
        if frames is None:
            raise RequestTimeout(f"{service}: no reply within {timeout:g} s")
        return _raise_if_error(decode(frames[1]), service)

    def _recv_until(self, want: Any, timeout: float) -> list[bytes] | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                return None
            frames = self._sock.recv_multipart()
            if not frames or len(frames) % 2:
                continue
            for i in range(0, len(frames), 2):
                try:
                    env = decode_envelope(frames[i])
                except ProtocolError:
                    continue
                if want(env):
                    return frames[i : i + 2]
            # Anything else (heartbeats, late replies to timed-out requests) is dropped.

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> SyncHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
