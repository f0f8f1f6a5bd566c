"""The hub's routing logic as a hypothesis state machine: no sockets, no clocks, no sleeps.

Whatever the order of registrations, requests, replies, silences and heartbeats, a request is
answered at most once, no worker holds more than its credit, and a request whose workers keep
dying ends in an error instead of vanishing.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from engine.routing import Router, RouterConfig
from protocols import (
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    Kind,
    PatientAnswer,
    Ready,
    Shutdown,
    StatusQuery,
    Welcome,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
)

SERVICES = ["patient", "examiner"]
CLIENT = b"client"


def request(msg_id: int, service: str) -> list[bytes]:
    return [encode_envelope(Kind.REQUEST, msg_id, service), encode(PatientAnswer(f"q{msg_id}"))]


class RouterMachine(RuleBasedStateMachine):
    workers = Bundle("workers")

    def __init__(self) -> None:
        super().__init__()
        self.config = RouterConfig(heartbeat_s=1.0, misses=3, max_attempts=3, queue_timeout_s=1e9)
        self.router = Router(self.config)
        self.now = 0.0
        self.next_id = 1
        self.answered: dict[int, int] = {}  # client id -> replies seen
        self.errors: dict[int, ErrorCode] = {}
        self.sent: set[int] = set()
        self.delivered: dict[bytes, list[int]] = {}  # worker -> route ids it holds
        self.serial = 0
        self.alive: set[bytes] = set()

    def _absorb(self, out: list[tuple[bytes, list[bytes]]]) -> None:
        for identity, frames in out:
            env = decode_envelope(frames[0])
            body = decode(frames[1])
            if identity == CLIENT and env.kind is Kind.REPLY:
                self.answered[env.id] = self.answered.get(env.id, 0) + 1
                if isinstance(body, Error):
                    self.errors[env.id] = body.code
            elif env.kind is Kind.REQUEST:
                self.delivered.setdefault(identity, []).append(env.id)
            elif env.kind is Kind.CONTROL:
                assert isinstance(body, Welcome | Heartbeat | Error | Shutdown)

    @rule(target=workers, service=st.sampled_from(SERVICES), capacity=st.integers(1, 3))
    def register(self, service: str, capacity: int) -> bytes:
        self.serial += 1
        identity = f"w{self.serial}".encode()
        frames = [
            encode_envelope(Kind.CONTROL),
            encode(Ready(service, capacity, identity.decode())),
        ]
        self._absorb(self.router.on_frames(identity, frames, self.now))
        self.alive.add(identity)
        return identity

    @rule(service=st.sampled_from(SERVICES))
    def send_request(self, service: str) -> None:
        msg_id = self.next_id
        self.next_id += 1
        self.sent.add(msg_id)
        self._absorb(self.router.on_frames(CLIENT, request(msg_id, service), self.now))

    @rule(worker=workers, data=st.data())
    def worker_replies(self, worker: bytes, data: st.DataObject) -> None:
        held = self.delivered.get(worker, [])
        if not held:
            return
        route = held.pop(data.draw(st.integers(0, len(held) - 1)))
        frames = [encode_envelope(Kind.REPLY, route), encode(PatientAnswer("a"))]
        self._absorb(self.router.on_frames(worker, frames, self.now))

    @rule(worker=workers)
    def worker_beats(self, worker: bytes) -> None:
        if worker in self.alive and worker in self.router.workers:
            w = self.router.workers[worker]
            ready = Ready(w.service, w.capacity, w.name)
            frames = [encode_envelope(Kind.CONTROL), encode(ready)]
            self._absorb(self.router.on_frames(worker, frames, self.now))

    @rule(worker=consumes(workers))
    def worker_dies(self, worker: bytes) -> None:
        """The worker falls silent; its held requests are lost with it."""
        self.alive.discard(worker)
        self.delivered.pop(worker, None)

    @rule(worker=consumes(workers))
    def worker_says_goodbye(self, worker: bytes) -> None:
        self.alive.discard(worker)
        self.delivered.pop(worker, None)
        frames = [encode_envelope(Kind.CONTROL), encode(Shutdown("bye"))]
        self._absorb(self.router.on_frames(worker, frames, self.now))

    @rule(seconds=st.floats(0.1, 5.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self._absorb(self.router.tick(self.now))

    @rule(garbage=st.lists(st.binary(max_size=40), max_size=4))
    def rogue_frames(self, garbage: list[bytes]) -> None:
        mine = {r: p.client_id for r, p in self.router.pending.items() if p.client == CLIENT}
        out = self.router.on_frames(b"rogue", garbage, self.now)
        # Garbage is answered to its sender only and leaves everyone else's requests alone.
        assert all(identity == b"rogue" for identity, _ in out)
        after = {r: p.client_id for r, p in self.router.pending.items() if p.client == CLIENT}
        assert after == mine

    @rule()
    def client_hello_and_status(self) -> None:
        out = self.router.on_frames(
            b"other", [encode_envelope(Kind.CONTROL, 7), encode(Hello("x"))], self.now
        )
        assert isinstance(decode(out[0][1][1]), Welcome)
        out = self.router.on_frames(
            b"other", [encode_envelope(Kind.REQUEST, 9, "hub"), encode(StatusQuery())], self.now
        )
        assert decode_envelope(out[0][1][0]).id == 9

    @invariant()
    def answered_at_most_once(self) -> None:
        assert all(n == 1 for n in self.answered.values()), self.answered

    @invariant()
    def credit_respected(self) -> None:
        for w in self.router.workers.values():
            assert len(w.in_flight) <= w.capacity

    @invariant()
    def every_request_accounted_for(self) -> None:
        pending = set()
        for p in self.router.pending.values():
            if p.client == CLIENT:
                pending.add(p.client_id)
        for msg_id in self.sent:
            assert (msg_id in self.answered) != (msg_id in pending), msg_id

    @invariant()
    def held_once(self) -> None:
        held = [r for w in self.router.workers.values() for r in w.in_flight]
        assert len(held) == len(set(held))

    @invariant()
    def errors_are_meaningful(self) -> None:
        assert set(self.errors.values()) <= {ErrorCode.WORKER_FAILED, ErrorCode.NO_WORKER}


RouterMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestRouter = RouterMachine.TestCase


def test_dead_worker_requests_go_elsewhere() -> None:
    r = Router(RouterConfig(heartbeat_s=1.0, misses=3))
    for name in (b"a", b"b"):
        r.on_frames(
            name, [encode_envelope(Kind.CONTROL), encode(Ready("exam", 1, name.decode()))], 0
        )
    out = r.on_frames(CLIENT, request(1, "exam"), 0.0)
    first = out[0][0]
    other = b"b" if first == b"a" else b"a"
    # Only the other worker stays alive.
    r.on_frames(other, [encode_envelope(Kind.CONTROL), encode(Ready("exam", 1, "x"))], 2.5)
    out = r.tick(3.5)
    assert [ident for ident, _ in out] == [other]
    assert r.retried == 1 and r.dead_workers == 1
    # The late reply of the dead worker and the real one: only the first counts.
    out = r.on_frames(other, [encode_envelope(Kind.REPLY, 1), encode(PatientAnswer("x"))], 3.6)
    assert out[0][0] == CLIENT
    assert (
        r.on_frames(first, [encode_envelope(Kind.REPLY, 1), encode(PatientAnswer("y"))], 3.7) == []
    )
    assert r.duplicates == 1


def test_wrong_version_and_garbage_get_clear_errors() -> None:
    import msgspec

    r = Router()
    wrong = msgspec.msgpack.encode([99, 1, 1, "patient"])
    out = r.on_frames(b"x", [wrong, b""], 0.0)
    err = decode(out[0][1][1])
    assert isinstance(err, Error) and err.code is ErrorCode.VERSION_MISMATCH
    assert "v99" in err.message and "v1" in err.message
    out = r.on_frames(b"x", [b"\xc1garbage", b"\x00"], 0.0)
    err = decode(out[0][1][1])
    assert isinstance(err, Error) and err.code is ErrorCode.BAD_MESSAGE
    assert r.pending == {} and r.workers == {}
