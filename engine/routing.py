"""The hub's routing logic, free of sockets and clocks: events in, frames out.

Workers offer `capacity` credits per service; a request goes to the worker of its service with
the most free credit, or waits in the service's queue. Liveness is any message from a peer; workers
repeat `Ready` as their heartbeat, so a restarted hub (or one that wrongly declared a worker dead)
learns them again within a period. A worker silent for `misses` periods is declared dead and its
in-flight requests go back to the front of the queue (a request carries its id, so a retry is
idempotent; the first reply wins and later ones are dropped). Everything here is driven by
`on_frames` and `tick`, which return what to send; the trio adapter in `engine.hub` only moves
bytes and time. Each worker's `Ready` also reports the policy version it serves (shown in
`Status`); `broadcast_weights` relays a learner's `WeightsAvailable` to every worker and keeps the
newest for workers that register later.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field

import structlog

from protocols import (
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    Kind,
    ProtocolError,
    Ready,
    Shutdown,
    Status,
    StatusQuery,
    VersionMismatch,
    WeightsAvailable,
    Welcome,
    WorkerStatus,
    check_pairs,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
)

log = structlog.get_logger("engine.hub")

HUB_SERVICE = "hub"  # requests to this service are answered by the hub itself
Out = tuple[bytes, list[bytes]]  # (peer identity, frames)


@dataclass(slots=True)
class Pending:
    """A request the hub has accepted and not yet answered."""

    route: int
    client: bytes
    client_id: int
    service: str
    body: bytes
    accepted: float
    attempts: int = 0
    worker: bytes | None = None


@dataclass(slots=True)
class Worker:
    identity: bytes
    name: str
    service: str
    capacity: int
    last_seen: float
    in_flight: dict[int, Pending] = field(default_factory=dict)
    served: int = 0
    draining: bool = False
    policy_version: int = -1  # as last reported in its Ready

    @property
    def free(self) -> int:
        return 0 if self.draining else self.capacity - len(self.in_flight)


@dataclass(slots=True)
class RouterConfig:
    heartbeat_s: float = 1.0
    misses: int = 3  # heartbeat periods of silence before a worker is dead
    max_attempts: int = 3  # deliveries of one request before it fails
    max_queued: int = 100_000  # per service, beyond which requests are refused (OVERLOADED)
    queue_timeout_s: float = 30.0  # a request waiting this long for a worker fails (NO_WORKER)
    name: str = "hub"


class Router:
    def __init__(self, config: RouterConfig | None = None, *, now: float = 0.0) -> None:
        self.config = config or RouterConfig()
        self.started = now
        self.workers: dict[bytes, Worker] = {}
        self.by_service: dict[str, list[Worker]] = collections.defaultdict(list)
        self.queues: dict[str, collections.deque[Pending]] = collections.defaultdict(
            collections.deque
        )
        self.pending: dict[int, Pending] = {}
        self._routes = itertools.count(1)
        self.requests = 0
        self.retried = 0
        self.duplicates = 0
        self.bad_frames = 0
        self.dead_workers = 0
        self.weights: WeightsAvailable | None = None  # the newest notice, for late joiners
        self._weights_body = b""

    # --- events -----------------------------------------------------------------------------

    def on_frames(self, identity: bytes, frames: list[bytes], now: float) -> list[Out]:
        """One multipart message from a peer (ROUTER has already stripped its identity): one or
        more (envelope, body) pairs."""
        out: list[Out] = []
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
        try:
            check_pairs(frames)
        except ProtocolError as exc:
            self.bad_frames += 1
            out.append(_error(identity, 0, ErrorCode.BAD_MESSAGE, str(exc)))
            return out
        for i in range(0, len(frames), 2):
            self._on_pair(identity, worker, frames[i], frames[i + 1], now, out)
        return out

    def _on_pair(
        self,
        identity: bytes,
        worker: Worker | None,
        header: bytes,
        body: bytes,
        now: float,
        out: list[Out],
    ) -> None:
        try:
            env = decode_envelope(header)
        except VersionMismatch as exc:
            self.bad_frames += 1
            out.append(_error(identity, 0, ErrorCode.VERSION_MISMATCH, str(exc)))
            return
        except ProtocolError as exc:
            self.bad_frames += 1
            out.append(_error(identity, 0, ErrorCode.BAD_MESSAGE, str(exc)))
            return
        kind = env.kind
        if kind is Kind.REQUEST:
            self._on_request(identity, env.id, env.service, body, now, out)
        elif kind is Kind.REPLY:
            self._on_reply(body, env.id, out)
        else:
            self._on_control(identity, worker, env.id, body, now, out)

    def on_unreachable(self, identity: bytes, now: float) -> list[Out]:
        """A send to this peer failed because it is gone (ROUTER_MANDATORY)."""
        worker = self.workers.get(identity)
        if worker is None:
            return []
        out: list[Out] = []
        self._remove_worker(worker, "unreachable", out)
        return out

    def tick(self, now: float) -> list[Out]:
        """Called about every heartbeat period: find dead workers, expire stale queued requests."""
        out: list[Out] = []
        limit = self.config.heartbeat_s * self.config.misses
        for worker in [w for w in self.workers.values() if now - w.last_seen > limit]:
            self._remove_worker(worker, f"missed {self.config.misses} heartbeats", out)
        timeout = self.config.queue_timeout_s
        for service, queue in self.queues.items():
            while queue and now - queue[0].accepted > timeout:
                p = queue.popleft()
                if self.pending.pop(p.route, None) is None:
                    continue  # already answered
                has = "no live worker" if not self.by_service.get(service) else "no free worker"
                out.append(
                    _error(
                        p.client,
                        p.client_id,
                        ErrorCode.NO_WORKER,
                        f"{has} for service {service!r} within {timeout:g} s",
                    )
                )
        return out

    # --- internals --------------------------------------------------------------------------

    def _on_request(
        self, client: bytes, client_id: int, service: str, body: bytes, now: float, out: list[Out]
    ) -> None:
        self.requests += 1
        if service == HUB_SERVICE:
            self._answer_hub(client, client_id, body, now, out)
            return
        queue = self.queues[service]
        if len(queue) >= self.config.max_queued:
            out.append(
                _error(client, client_id, ErrorCode.OVERLOADED, f"service {service!r} queue full")
            )
            return
        p = Pending(next(self._routes), client, client_id, service, body, now)
        self.pending[p.route] = p
        queue.append(p)
        self._dispatch(service, out)

    def _dispatch(self, service: str, out: list[Out]) -> None:
        queue = self.queues.get(service)
        if not queue:
            return
        workers = self.by_service.get(service)
        if not workers:
            return
        while queue:
            best = workers[0] if len(workers) == 1 else max(workers, key=_free)
            if best.free <= 0:
                return
            p = queue.popleft()
            if p.route not in self.pending:
                continue  # answered while queued (a late reply from a worker declared dead)
            p.worker = best.identity
            p.attempts += 1
            best.in_flight[p.route] = p
            out.append((best.identity, [encode_envelope(Kind.REQUEST, p.route, p.service), p.body]))

    def _on_reply(self, body: bytes, route: int, out: list[Out]) -> None:
        p = self.pending.pop(route, None)
        if p is None:
            self.duplicates += 1  # a late reply to a request already answered or failed
            return
        if p.worker is not None:
            holder = self.workers.get(p.worker)
            if holder is not None:
                holder.in_flight.pop(route, None)
                holder.served += 1
        out.append((p.client, [encode_envelope(Kind.REPLY, p.client_id), body]))
        self._dispatch(p.service, out)

    def _on_control(
        self,
        identity: bytes,
        worker: Worker | None,
        msg_id: int,
        body: bytes,
        now: float,
        out: list[Out],
    ) -> None:
        try:
            msg = decode(body)
        except ProtocolError as exc:
            self.bad_frames += 1
            out.append(_error(identity, msg_id, ErrorCode.BAD_MESSAGE, str(exc)))
            return
        if isinstance(msg, Heartbeat):
            out.append((identity, [encode_envelope(Kind.CONTROL), _HEARTBEAT]))
        elif isinstance(msg, Ready):
            self._register(identity, msg, now, out)
        elif isinstance(msg, Hello):
            welcome = Welcome(hub=self.config.name, heartbeat_s=self.config.heartbeat_s)
            out.append((identity, [encode_envelope(Kind.CONTROL, msg_id), encode(welcome)]))
        elif isinstance(msg, Shutdown):
            if worker is not None:
                self._remove_worker(worker, f"shut down: {msg.reason}", out)
        else:
            self.bad_frames += 1
            out.append(
                _error(
                    identity,
                    msg_id,
                    ErrorCode.BAD_MESSAGE,
                    f"{type(msg).__name__} is not a control message",
                )
            )

    def _register(self, identity: bytes, msg: Ready, now: float, out: list[Out]) -> None:
        worker = self.workers.get(identity)
        if worker is not None and worker.service != msg.service:
            self._remove_worker(worker, "re-registered for another service", out)
            worker = None
        joined = worker is None
        if worker is None:
            worker = Worker(identity, msg.worker, msg.service, max(1, msg.capacity), now)
            self.workers[identity] = worker
            self.by_service[msg.service].append(worker)
            log.info("worker ready", worker=msg.worker, service=msg.service, capacity=msg.capacity)
        else:
            worker.capacity = max(1, msg.capacity)
        worker.policy_version = msg.policy_version
        welcome = Welcome(hub=self.config.name, heartbeat_s=self.config.heartbeat_s)
        out.append((identity, [encode_envelope(Kind.CONTROL), encode(welcome)]))
        if joined and self.weights is not None and self.weights.version > msg.policy_version:
            out.append((identity, [encode_envelope(Kind.CONTROL), self._weights_body]))
        self._dispatch(msg.service, out)

    def _remove_worker(self, worker: Worker, why: str, out: list[Out]) -> None:
        self.workers.pop(worker.identity, None)
        peers = self.by_service.get(worker.service, [])
        if worker in peers:
            peers.remove(worker)
        self.dead_workers += 1
        retry = sorted(worker.in_flight.values(), key=lambda p: p.route)
        worker.in_flight.clear()
        report = log.info if why.startswith("shut down") and not retry else log.warning
        report(
            "worker removed",
            worker=worker.name,
            service=worker.service,
            why=why,
            requeued=len(retry),
        )
        queue = self.queues[worker.service]
        for p in reversed(retry):
            p.worker = None
            if p.attempts >= self.config.max_attempts:
                self.pending.pop(p.route, None)
                out.append(
                    _error(
                        p.client,
                        p.client_id,
                        ErrorCode.WORKER_FAILED,
                        f"service {p.service!r}: {p.attempts} workers failed this request "
                        f"(last: {worker.name}, {why})",
                    )
                )
                continue
            self.retried += 1
            queue.appendleft(p)
        self._dispatch(worker.service, out)

    def _answer_hub(
        self, client: bytes, client_id: int, body: bytes, now: float, out: list[Out]
    ) -> None:
        try:
            msg = decode(body)
        except ProtocolError as exc:
            out.append(_error(client, client_id, ErrorCode.BAD_MESSAGE, str(exc)))
            return
        if not isinstance(msg, StatusQuery):
            out.append(
                _error(
                    client,
                    client_id,
                    ErrorCode.BAD_REQUEST,
                    f"hub cannot answer {type(msg).__name__}",
                )
            )
            return
        out.append((client, [encode_envelope(Kind.REPLY, client_id), encode(self.status(now))]))

    def status(self, now: float) -> Status:
        return Status(
            hub=self.config.name,
            uptime_s=now - self.started,
            workers=[
                WorkerStatus(
                    w.name, w.service, w.capacity, len(w.in_flight), w.served, w.policy_version
                )
                for w in self.workers.values()
            ],
            queued={s: len(q) for s, q in self.queues.items() if q},
            requests=self.requests,
            retried=self.retried,
            counters={
                "duplicates": self.duplicates,
                "bad_frames": self.bad_frames,
                "dead_workers": self.dead_workers,
                "pending": len(self.pending),
            },
        )

    def shutdown_all(self, reason: str) -> list[Out]:
        """Ask every worker to stop."""
        body = encode(Shutdown(reason))
        return [(w.identity, [encode_envelope(Kind.CONTROL), body]) for w in self.workers.values()]

    def broadcast_weights(self, msg_body: bytes) -> list[Out]:
        """Send an encoded `WeightsAvailable` to every worker as a CONTROL message, and remember
        the newest one so that a worker registering later gets it with its `Welcome`."""
        try:
            notice = decode(msg_body)
        except ProtocolError as exc:
            raise ValueError(
                f"broadcast_weights needs an encoded WeightsAvailable: {exc}"
            ) from None
        if not isinstance(notice, WeightsAvailable):
            raise ValueError(
                f"broadcast_weights needs an encoded WeightsAvailable, got {type(notice).__name__}"
            )
        if self.weights is None or notice.version >= self.weights.version:
            self.weights, self._weights_body = notice, msg_body
        log.info("weights available", version=notice.version, endpoint=notice.endpoint)
        return [
            (w.identity, [encode_envelope(Kind.CONTROL), msg_body]) for w in self.workers.values()
        ]

    def services(self) -> dict[str, int]:
        """Live workers per service."""
        return {s: len(ws) for s, ws in self.by_service.items() if ws}


def _free(w: Worker) -> int:
    return w.free


_HEARTBEAT = encode(Heartbeat())


def _error(identity: bytes, msg_id: int, code: ErrorCode, message: str) -> Out:
    kind = Kind.REPLY if msg_id else Kind.CONTROL
    return (identity, [encode_envelope(kind, msg_id), encode(Error(code, message))])
