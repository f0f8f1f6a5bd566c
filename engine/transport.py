"""pyzmq under trio: one task owns each socket and does all of its sends and receives.

pyzmq has no trio support, so every call is `NOBLOCK`; when nothing is ready the owner parks in
`trio.lowlevel.wait_readable(sock.FD)`. That FD is edge-triggered and *any* operation on the
socket can consume its edge, so the owner re-reads `zmq.EVENTS` before every park. Other tasks
never touch the socket: `send()` appends to the owner's queue and wakes it by cancelling the park.
(A task parked for a reply while another sends on the same socket would hang forever: the send
eats the edge. Owning both directions in one task is what rules that out.)
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import structlog
import trio
import zmq

from protocols import MAX_FRAME_BYTES

log = structlog.get_logger("engine.transport")

DRAIN_BATCH = 1000  # messages received per wake-up before yielding to other tasks
Frames = list[bytes]
# Plain ints: pyzmq's flag enums cost a Python-level enum operation on every call.
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_BATCH_FRAMES = 512  # at most this many frames merged into one ZeroMQ message
_BATCH_BYTES = 1 << 20  # nor more than this many bytes (large frames go alone)


class SocketClosed(Exception):
    """The socket's owner task has stopped; nothing more can be sent."""


def make_socket(
    ctx: zmq.Context[Any], kind: int, *, identity: bytes | None = None, hwm: int = 100_000
) -> zmq.Socket[Any]:
    """A socket with dxsim's defaults: size limit, no linger, bounded queues."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    if kind == zmq.ROUTER:
        # An unknown or vanished peer raises EHOSTUNREACH instead of silently dropping.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock


class TrioSocket:
    """Wraps a `zmq.Socket`; `run()` is the owning task, `send()` may be called from any task.

    `on_message(frames)` is called synchronously by the owner for every multipart message
    received; it must not block (hand work to other tasks through channels or `start_soon`).
    Messages queued for the same peer are sent merged into one multipart message, so frames
    must be self-delimiting (dxsim's are (envelope, body) pairs).
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        on_message: Callable[[Frames], None],
        *,
        name: str = "socket",
        on_unreachable: Callable[[Frames], None] | None = None,
    ) -> None:
        self.sock = sock
        self.name = name
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._out: collections.deque[Frames] = collections.deque()
        self._park: trio.CancelScope | None = None
        self._closed = False
        self._routed = sock.type == zmq.ROUTER  # first frame names the peer
        self.sent = 0
        self.received = 0

    def send(self, frames: Frames) -> None:
        """Send or queue a multipart message; never blocks.

        When the owner is parked and nothing is queued, the message goes out at once (saving a
        trip through trio's scheduler on the latency path); the owner is then woken anyway, so
        that it re-reads `EVENTS` in case this send consumed the FD's edge.
        """
        if self._closed:
            raise SocketClosed(f"{self.name} is closed")
        park = self._park
        if park is None:
            self._out.append(frames)
            return
        if self._out or not self._send_now(frames):
            self._out.append(frames)
        park.cancel()

    @property
    def backlog(self) -> int:
        return len(self._out)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self.sock
        fd = sock.getsockopt(zmq.FD)
        out = self._out
        task_status.started()
        try:
            while True:
                progressed = self._flush(sock, out)
                received = 0
                while received < DRAIN_BATCH:
                    try:
                        frames = sock.recv_multipart(_NOBLOCK)
                    except zmq.Again:
                        break
                    received += 1
                    self._on_message(frames)
                self.received += received
                if received:
                    progressed = True
                if out and self._flush(sock, out):
                    progressed = True
                if progressed:
                    await trio.lowlevel.checkpoint()
                    continue
                # Nothing moved. Re-read EVENTS (this also re-arms the edge) before parking.
                events = int(sock.getsockopt(_EVENTS))
                if events & _POLLIN or (out and events & _POLLOUT):
                    continue
                with trio.CancelScope() as park:
                    self._park = park
                    await trio.lowlevel.wait_readable(fd)
                self._park = None
        finally:
            self._closed = True
            self._park = None
            trio.lowlevel.notify_closing(fd)
            sock.close(linger=0)

    def _flush(self, sock: zmq.Socket[Any], out: collections.deque[Frames]) -> bool:
        """Send what is queued, merging messages for the same peer into one ZeroMQ message
        (dxsim messages are frame pairs, so concatenation is lossless)."""
        sent = self.sent
        routed = self._routed
        while out:
            frames = out.popleft()
            if len(out) and len(frames[-1]) < _BATCH_BYTES:
                frames = self._merge(frames, out, routed)
            if not self._send_now(frames):
                out.appendleft(frames)
                break
        return self.sent > sent

    def _send_now(self, frames: Frames) -> bool:
        """False when the socket would block (high-water mark); a vanished peer is reported."""
        try:
            self.sock.send_multipart(frames, _NOBLOCK, copy=len(frames[-1]) < 65536)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            if self._on_unreachable is not None:
                self._on_unreachable(frames)
            else:
                log.debug("peer unreachable", socket=self.name)
        self.sent += 1
        return True

    @staticmethod
    def _merge(first: Frames, out: collections.deque[Frames], routed: bool) -> Frames:
        """`first` plus the following queued messages to the same peer, up to a batch limit."""
        merged = list(first)
        size = sum(len(f) for f in first)
        skipped: list[Frames] = []
        while out and len(merged) < _BATCH_FRAMES and size < _BATCH_BYTES:
            nxt = out.popleft()
            if routed and nxt[0] != first[0]:
                skipped.append(nxt)
                if len(skipped) > _BATCH_FRAMES:
                    break
                continue
            part = nxt[1:] if routed else nxt
            merged.extend(part)
            size += sum(len(f) for f in part)
        out.extendleft(reversed(skipped))
        return merged
