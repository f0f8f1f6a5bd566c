"""Talking to the hub from outside a worker: the async `HubClient` and the blocking `SyncHubClient`.

Both speak the same protocol: a `Hello`/`Welcome` handshake (a peer of another protocol version
gets an error naming both versions), requests with ids, heartbeats both ways. A hub silent for
`misses` heartbeat periods fails every waiting request with `HubUnreachable` instead of letting it
hang. These are what other trainers embed; they import nothing heavy.
"""

from __future__ import annotations

import itertools
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
    __slots__ = ("event", "body", "failure")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.body: bytes | None = None
        self.failure: BaseException | None = None


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
        slot = _Slot()
        self._slots[msg_id] = slot
        self._send([encode_envelope(Kind.REQUEST, msg_id, service), encode(body)])
        try:
            with trio.move_on_after(timeout):
                await slot.event.wait()
        finally:
            self._slots.pop(msg_id, None)
        if slot.failure is not None:
            raise slot.failure
        if slot.body is None:
            raise RequestTimeout(f"{service}: no reply within {timeout:g} s")
        return _raise_if_error(decode(slot.body), service)

    def _on_message(self, frames: list[bytes]) -> None:
        self._last_heard = trio.current_time()
        if self.hub_dead:
            self.hub_dead = False
            log.info("hub is back", client=self.name)
        if len(frames) != 2:
            log.warning("dropping malformed frame from hub", client=self.name, frames=len(frames))
            return
        try:
            env = decode_envelope(frames[0])
        except ProtocolError as exc:
            log.warning("dropping undecodable frame from hub", client=self.name, error=str(exc))
            return
        if env.kind is Kind.REPLY:
            slot = self._slots.pop(env.id, None)
            if slot is not None:
                slot.body = frames[1]
                slot.event.set()
        elif env.kind is Kind.CONTROL and not self._handshake.event.is_set():
            self._handshake.body = frames[1]
            self._handshake.event.set()
        elif env.kind is Kind.CONTROL:
            try:
                msg = decode(frames[1])
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
                for slot in list(self._slots.values()):
                    slot.failure = failure
                    slot.event.set()
                self._slots.clear()


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
    async with trio.open_nursery() as nursery:
        await nursery.start(socket.run)
        client._send([encode_envelope(Kind.CONTROL, 1), encode(Hello(name=name))])
        with trio.move_on_after(handshake_timeout):
            await client._handshake.event.wait()
        if client._handshake.body is None:
            raise HubUnreachable(f"no answer from hub at {endpoint} within {handshake_timeout:g} s")
        welcome = _raise_if_error(decode(client._handshake.body), "hub")
        if not isinstance(welcome, Welcome):
            raise ProtocolError(f"expected Welcome from hub, got {type(welcome).__name__}")
        client.heartbeat_s = welcome.heartbeat_s
        nursery.start_soon(client._heartbeat)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


def local_client(hub: Hub, name: str = "local") -> HubClient:
    """A client inside the hub's own process and trio run: frames go straight into the router,
    with no socket and no heartbeat (the hub cannot die without this process)."""
    client = HubClient(name, hub.router.config.heartbeat_s, misses=1 << 30)
    identity = f"local:{name}".encode()
    client._send = hub.attach_local(identity, client._on_message)
    client._handshake.event.set()
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
            if len(frames) != 2:
                continue
            try:
                env = decode_envelope(frames[0])
            except ProtocolError:
                continue
            if want(env):
                return frames
            # Anything else (heartbeats, late replies to timed-out requests) is dropped.

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> SyncHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
