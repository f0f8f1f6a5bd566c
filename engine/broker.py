"""Rollout broker: a durable store of finished trajectories that hands out whole GRPO groups.

Two layers, after hypercorn's I/O-free cores (STYLE.md):

- `BrokerCore`, a plain class with no sockets, no event loop and no clock: `publish`, `pull`,
  `ack`, `expire(now)`, and `BrokerCore.open(...)` to rebuild it from a `SegmentLog`. Time comes
  in as an argument, so tests drive it directly (hypothesis stateful model, tests/test_broker*.py).
- `Broker`, the Actor: maps messages to the core, passes `time.monotonic()`, and turns refusals
  into `ActorError`s.

Guarantees, when a log directory is configured (`BrokerConfig.log_dir`):

- A trajectory is appended to the log (durable per `fsync_every`) before `Published` is returned;
  an ack is appended before `Acked` is returned. On start the log is replayed: every published,
  unacked trajectory is pending again (complete groups ready, incomplete ones waiting), acked ids
  are remembered, and a re-published id (a scheduler retry) is dropped as a duplicate.
- Leases live only in memory: a lease unacked after `Pull.lease_s` expires and its groups go back
  to the front of the queue; a restart ends every lease the same way. An ack of an expired or
  unknown lease is `NOT_FOUND` (its groups are, or will be, delivered again), so a trajectory is
  delivered at most once after its ack.
- Acked ids are remembered up to `max_seen_ids` (oldest forgotten first); within that window no
  acked id is delivered again, across restarts and compaction.
- Compaction: after an ack, the oldest closed segments with no unacked trajectory are deleted
  oldest first, so an ack record is never deleted while the trajectory record it cancels is kept.
  The acked ids they held that are still in the window are first re-written as one record in the
  active segment.
- Bounded memory (backpressure): at most `max_pending` trajectories are held (waiting, ready or
  leased). Beyond it `Publish` is refused with `OVERLOADED` and nothing is logged; the scheduler
  retries later. Set `max_pending` to at least the scheduler's concurrency times the group size,
  or incomplete groups can fill the broker and never complete.

Without `log_dir` the broker keeps the same rules in memory only. `jsonl` additionally appends
every accepted trajectory as JSON lines, for people and tools.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import msgspec
import structlog
import trio

from engine.actor import Actor, ActorError, handles
from engine.segment_log import SegmentLog
from protocols import (
    Ack,
    Acked,
    BrokerStats,
    BrokerStatsQuery,
    ErrorCode,
    Groups,
    Publish,
    Published,
    Pull,
    Trajectory,
)

log = structlog.get_logger("engine.broker")


class BrokerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    jsonl: str | None = None  # append every accepted trajectory here (JSON lines, not replayed)
    log_dir: str | None = None  # durable segment log; None keeps everything in memory only
    segment_bytes: int = 64 << 20  # roll to a new segment at this size
    fsync_every: int = 1  # 1: fsync every record, N: every N records, 0: never (OS page cache)
    max_pending: int = 100_000  # trajectories held (waiting + ready + leased); more: OVERLOADED
    max_seen_ids: int = 1_000_000  # acked ids remembered for duplicate detection


# --- log records ---------------------------------------------------------------------------------


class _Stored(msgspec.Struct, tag="t", array_like=True, frozen=True):
    trajectory: Trajectory


class _AckedIds(msgspec.Struct, tag="a", array_like=True, frozen=True):
    ids: list[str]


_Record = _Stored | _AckedIds
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Record)


class _Lease(msgspec.Struct):
    groups: list[list[Trajectory]]
    deadline: float


# --- the core ------------------------------------------------------------------------------------


class BrokerCore:
    """Publish / pull / ack / expire over an optional `SegmentLog`; no sockets, no clock."""

    def __init__(
        self,
        segment_log: SegmentLog | None = None,
        *,
        max_pending: int = 100_000,
        max_seen_ids: int = 1_000_000,
    ) -> None:
        self.log = segment_log
        self.max_pending = max_pending
        self.max_seen_ids = max_seen_ids
        self.open_groups: dict[str, list[Trajectory]] = {}
        self.ready: collections.deque[list[Trajectory]] = collections.deque()
        self.leases: dict[str, _Lease] = {}
        self.pending_ids: dict[str, int] = {}  # unacked id -> its segment (0: no log)
        self.acked_ids: collections.OrderedDict[str, int] = collections.OrderedDict()  # -> segment
        self.live: collections.Counter[int] = collections.Counter()  # segment -> unacked records
        self._lease_ids = itertools.count(1)
        self._lease_prefix = os.urandom(4).hex()  # lease names never repeat across restarts
        self.received = 0
        self.duplicates = 0
        self.acked = 0
        self.compacted_segments = 0

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        fsync_every: int = 1,
        max_pending: int = 100_000,
        max_seen_ids: int = 1_000_000,
    ) -> BrokerCore:
        """Open (or create) the log in `directory` and rebuild the broker's state from it."""
        seg_log = SegmentLog(directory, segment_bytes=segment_bytes, fsync_every=fsync_every)
        core = cls(seg_log, max_pending=max_pending, max_seen_ids=max_seen_ids)
        core._replay()
        return core

    def _replay(self) -> None:
        assert self.log is not None
        pending: dict[str, tuple[Trajectory, int]] = {}
        for segment, payload in self.log.replay():
            record = _decoder.decode(payload)
            if isinstance(record, _Stored):
                t = record.trajectory
                if t.id in pending or t.id in self.acked_ids:
                    continue
                pending[t.id] = (t, segment)
            else:
                for i in record.ids:
                    pending.pop(i, None)
                    self._remember_acked(i, segment)
        for t, segment in pending.values():  # insertion order: publish order
            self._admit(t, segment)
        if len(pending) > self.max_pending:
            log.warning("broker.replay_over_limit", pending=len(pending), limit=self.max_pending)
        log.info(
            "broker.replayed",
            pending=len(pending),
            ready_groups=len(self.ready),
            acked_ids=len(self.acked_ids),
            segments=len(self.log.segments()),
        )
        self._compact()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    # --- events --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self.pending_ids)

    def publish(self, t: Trajectory) -> bool:
        """Store a trajectory; False if its id is a duplicate. Raises OVERLOADED when full."""
        if t.id in self.pending_ids or t.id in self.acked_ids:
            self.duplicates += 1
            return False
        if len(self.pending_ids) >= self.max_pending:
            raise ActorError(
                ErrorCode.OVERLOADED,
                f"broker holds {len(self.pending_ids)} unacked trajectories (max_pending); retry",
            )
        segment = 0
        if self.log is not None:
            segment = self.log.append(_encoder.encode(_Stored(t)))  # durable before we answer
        self.received += 1
        self._admit(t, segment)
        return True

    def pull(
        self, max_groups: int, lease_s: float, now: float
    ) -> tuple[str, list[list[Trajectory]]]:
        """Lease up to `max_groups` complete groups until `now + lease_s`; ("", []) if none."""
        self.expire(now)
        groups = [self.ready.popleft() for _ in range(min(max_groups, len(self.ready)))]
        if not groups:
            return "", []
        lease = f"lease-{self._lease_prefix}-{next(self._lease_ids)}"
        self.leases[lease] = _Lease(groups, now + lease_s)
        return lease, groups

    def ack(self, lease: str, now: float) -> int:
        """Acknowledge a lease: its trajectories are done for good. NOT_FOUND if expired/unknown."""
        self.expire(now)
        held = self.leases.get(lease)
        if held is None:
            raise ActorError(ErrorCode.NOT_FOUND, f"no open lease {lease!r} (expired or unknown)")
        ids = [t.id for g in held.groups for t in g]
        segment = 0
        if self.log is not None:  # logged first: if this raises, the lease is still held
            segment = self.log.append(_encoder.encode(_AckedIds(ids)))
        del self.leases[lease]
        for i in ids:
            home = self.pending_ids.pop(i)
            self.live[home] -= 1
            self._remember_acked(i, segment)
        self.acked += len(ids)
        self._compact()
        return len(ids)

    def expire(self, now: float) -> list[str]:
        """End every lease past its deadline; its groups go back to the front of the queue."""
        expired = [name for name, lease in self.leases.items() if lease.deadline <= now]
        for name in reversed(expired):  # oldest ends up first
            self.ready.extendleft(reversed(self.leases.pop(name).groups))
        if expired:
            log.info("broker.leases_expired", leases=len(expired))
        return expired

    def leased(self) -> int:
        return sum(len(g) for lease in self.leases.values() for g in lease.groups)

    # --- internals -----------------------------------------------------------------------------

    def _admit(self, t: Trajectory, segment: int) -> None:
        self.pending_ids[t.id] = segment
        self.live[segment] += 1
        group = self.open_groups.setdefault(t.group_id, [])
        group.append(t)
        if len(group) >= max(t.group_size, 1):
            del self.open_groups[t.group_id]
            self.ready.append(sorted(group, key=lambda x: x.sample))

    def _remember_acked(self, i: str, segment: int) -> None:
        self.acked_ids[i] = segment
        self.acked_ids.move_to_end(i)
        while len(self.acked_ids) > self.max_seen_ids:
            self.acked_ids.popitem(last=False)

    def _compact(self) -> None:
        """Delete the oldest closed segments that hold no unacked trajectory."""
        if self.log is None:
            return
        segments = self.log.segments()
        doomed: list[int] = []
        for s in segments[:-1]:  # never the active one
            if self.live[s] > 0:
                break
            doomed.append(s)
        if not doomed:
            return
        last = doomed[-1]
        carried = [i for i, s in self.acked_ids.items() if s <= last]
        if carried:  # keep remembering these acks once their records are gone
            active = self.log.append(_encoder.encode(_AckedIds(carried)))
            self.log.sync()
            for i in carried:
                self.acked_ids[i] = active
        for s in doomed:
            self.log.delete(s)
            self.live.pop(s, None)
        self.compacted_segments += len(doomed)
        log.info("broker.compacted", segments=len(doomed), carried_ids=len(carried))


# --- the actor -----------------------------------------------------------------------------------


class Broker(Actor):
    service = "broker"
    Config = BrokerConfig

    def __init__(self, config: BrokerConfig | None = None) -> None:
        super().__init__(config or BrokerConfig())
        cfg: BrokerConfig = self.config
        self.core = BrokerCore(max_pending=cfg.max_pending, max_seen_ids=cfg.max_seen_ids)
        self.clock: Callable[[], float] = time.monotonic
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()
        self._group_ready = trio.lowlevel.ParkingLot()  # long-polling pulls wait here

    async def start(self) -> None:
        cfg: BrokerConfig = self.config
        if cfg.log_dir:
            self.core = BrokerCore.open(
                cfg.log_dir,
                segment_bytes=cfg.segment_bytes,
                fsync_every=cfg.fsync_every,
                max_pending=cfg.max_pending,
                max_seen_ids=cfg.max_seen_ids,
            )
        if cfg.jsonl:
            Path(cfg.jsonl).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(cfg.jsonl, "ab")  # noqa: SIM115 - closed in close()

    async def close(self) -> None:
        self.core.close()
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def received(self) -> int:
        return self.core.received

    @property
    def duplicates(self) -> int:
        return self.core.duplicates

    @property
    def acked(self) -> int:
        return self.core.acked

    @handles(Publish)
    def publish(self, msg: Publish) -> Published:
        t = msg.trajectory
        ready = len(self.core.ready)
        if not self.core.publish(t):
            return Published(t.id, duplicate=True)
        if self._file is not None:
            self._file.write(self._encoder.encode(t) + b"\n")
            self._file.flush()
        if len(self.core.ready) > ready and self._group_ready:
            self._group_ready.unpark_all()
        return Published(t.id)

    @handles(Pull)
    async def pull(self, msg: Pull) -> Groups:
        """Lease complete groups; with `wait_s` > 0 hold the request until one is complete (a
        long poll: the learner neither spins nor sleeps) or the wait ends with no groups."""
        deadline = trio.current_time() + max(msg.wait_s, 0.0)
        while True:
            lease, groups = self.core.pull(msg.max_groups, msg.lease_s, self.clock())
            if groups or trio.current_time() >= deadline:
                return Groups(lease=lease, groups=groups)
            with trio.move_on_at(deadline):
                await self._group_ready.park()

    @handles(Ack)
    def ack(self, msg: Ack) -> Acked:
        return Acked(self.core.ack(msg.lease, self.clock()))

    @handles(BrokerStatsQuery)
    def stats(self, msg: BrokerStatsQuery) -> BrokerStats:
        core = self.core
        core.expire(self.clock())
        leased = core.leased()
        return BrokerStats(
            received=core.received,
            duplicates=core.duplicates,
            pending=core.pending - leased,
            leased=leased,
            acked=core.acked,
        )
