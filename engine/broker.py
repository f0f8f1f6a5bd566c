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
  unacked trajectory is pending again (complete groups ready, incomplete ones waiting) and the
  acked window (below) is rebuilt exactly as it was.
- Delivery order: oldest policy first. A complete group's key is the oldest policy version among
  its trajectories' turns (`group_version`, the learner's own per-turn definition), and `pull`
  hands out the lowest key first, ties in the order the groups became ready. Why: groups complete
  out of admission order (long episodes finish late), and plain completion order left a learner
  training on groups already past its staleness limit while newer ones went first. Replay admits
  trajectories in publish order, so after a restart the pending groups come out in the same order.
- Leases live only in memory: a lease unacked after `Pull.lease_s` expires and its groups go back
  under their original key and place, so they come out first among equals; a restart ends every
  lease the same way. An ack of an expired or unknown lease is `NOT_FOUND` (its groups are, or
  will be, delivered again), so a trajectory is delivered at most once after its ack.
- Duplicates: a publish whose id is pending (published, not acked) is dropped. So is one whose id
  is among the last `max_seen_ids` ids acked (`AckedWindow`, counted in acks, not time), across
  restarts and compaction. A re-publish comes from the scheduler retrying a publish whose reply it
  did not get (at most `attempts` x `request_timeout_s` after the first, about 30 s by default) or
  from the hub re-sending it to a restarted broker; `max_seen_ids` must exceed the acks in that
  time (the default 1M: 100 s at 10k acks/s). An id acked longer ago than that is accepted and
  delivered again. So: a trajectory id is never delivered after its ack while fewer than
  `max_seen_ids` acks have followed it (and, with probability about `max_seen_ids / 2**64` per
  publish, a new id is taken for an acked one: see `AckedWindow`).
- Compaction: after an ack, the oldest closed segments with no unacked trajectory are deleted
  oldest first, so an ack record is never deleted while the trajectory record it cancels is kept.
  If one of them holds the latest record of an ack still in the window, the whole window (8 bytes
  an ack) is first written as one record in the active segment. With a consumer that keeps up
  that is once per segment, so keep `segment_bytes` well above 8 x `max_seen_ids` (the defaults:
  64 MB segments, at most 8 MB of window each).
- Bounded memory: at most `max_pending` trajectories are held (waiting, ready or leased). Beyond it
  `Publish` is refused with `OVERLOADED` and nothing is logged; the scheduler retries later. Set
  `max_pending` to at least the scheduler's concurrency times the group size, or incomplete groups
  can fill the broker and never complete. The acked window is allocated in full at start (16 MB
  for 1M ids) and per-trajectory state is dropped at its ack, so RSS stays flat however many
  trajectories pass through (benchmarks/broker_load.py).

Without `log_dir` the broker keeps the same rules in memory only. `jsonl` additionally appends
every accepted trajectory as JSON lines, for people and tools; it is rotated logrotate style
(`trajectories.jsonl` -> `.1` -> ... -> `.{jsonl_keep}`, the oldest deleted) before it would
pass `jsonl_max_mb`, so that copy takes at most (jsonl_keep + 1) x jsonl_max_mb of disk.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import itertools
import os
import sys
import time
from array import array
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
    max_seen_ids: int = 1_000_000  # last acks remembered for duplicates (16 bytes each, fixed)
    jsonl_max_mb: int = 256  # rotate `jsonl` before it passes this size; 0: never rotate
    jsonl_keep: int = 2  # rotated copies kept (jsonl.1 .. jsonl.N), the oldest deleted

    def __post_init__(self) -> None:
        if self.jsonl_max_mb < 0:
            raise ValueError(f"jsonl_max_mb must be >= 0 (0: no limit), got {self.jsonl_max_mb}")
        if self.jsonl_keep < 0:
            raise ValueError(f"jsonl_keep must be >= 0, got {self.jsonl_keep}")


# --- log records ---------------------------------------------------------------------------------


class _Stored(msgspec.Struct, tag="t", array_like=True, frozen=True):
    trajectory: Trajectory


class _AckedIds(msgspec.Struct, tag="a", array_like=True, frozen=True):
    ids: list[str]


class _Window(msgspec.Struct, tag="w", array_like=True, frozen=True):
    """The whole acked window at ack number `seq` (`AckedWindow.snapshot`), written before
    compaction deletes ack records whose acks are still remembered; replay resets to it."""

    seq: int
    fingerprints: bytes


_Record = _Stored | _AckedIds | _Window
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Record)
_MAX_WINDOW = 1 << 28


# a ready group in the heap: (oldest policy version, ready sequence number, the group)
_Entry = tuple[int, int, list[Trajectory]]


class _Lease(msgspec.Struct):
    entries: list[_Entry]  # kept whole, so an expired lease's groups go back where they were
    deadline: float

    @property
    def groups(self) -> list[list[Trajectory]]:
        return [group for _, _, group in self.entries]


def trajectory_version(t: Trajectory) -> int | None:
    """The oldest policy version among the turns that carry training tokens (token ids with one
    log-probability each), as the learner counts staleness; None if no turn carries any."""
    versions = [
        turn.policy_version
        for turn in t.turns
        if turn.token_ids and len(turn.token_ids) == len(turn.logprobs)
    ]
    return min(versions, default=None)


def group_version(group: list[Trajectory]) -> int:
    """A complete group's delivery key: the oldest policy version among its trajectories. A group
    with no training tokens (scripted agents) has no staleness to lose, so it takes -1 and goes
    first rather than waiting behind every group that does."""
    versions = [v for t in group if (v := trajectory_version(t)) is not None]
    return min(versions, default=-1)


# --- duplicate detection -------------------------------------------------------------------------


def fingerprint(trajectory_id: str) -> int:
    """A stable 64-bit fingerprint of an id (never 0: 0 marks an empty ring slot)."""
    digest = hashlib.blake2b(trajectory_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class AckedWindow:
    """The fingerprints of the last `capacity` acks, in a memory fixed when it is created.

    Why: remembering every acked id grows with the run; what duplicate detection needs is the
    recent acks (a publish is re-sent by the scheduler within its attempts x request timeout).
    Memory is a ring of `capacity` 64-bit fingerprints in ack order (8 bytes each) and an
    open-addressing index into it (linear probing, at most half full, 4 bytes a slot, deletion by
    backward shift, so no tombstones), both allocated and touched here: 16 MB for 1M ids, and
    nothing more however many acks follow.

    Ack number `seq` (counted from 0) sits in ring slot `seq % capacity`; adding the next one
    evicts the oldest once the ring is full. An id acked again (possible once it has left the
    window) takes a new slot and the index points at its newest one. Two different ids share a
    fingerprint with probability about `capacity / 2**64` per lookup; the newer then counts as
    already acked (a false duplicate), which is the price of the fixed size.
    """

    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= _MAX_WINDOW:
            raise ValueError(f"max_seen_ids must be in 1..{_MAX_WINDOW}, got {capacity}")
        self.capacity = capacity
        self._slots = 1 << (2 * capacity - 1).bit_length()  # a power of two >= 2 * capacity
        self._mask = self._slots - 1
        self._ring = array("Q", bytes(8)) * capacity  # fingerprints; 0 = empty (after a reset)
        self._index = array("I", bytes(4)) * self._slots  # ring slot + 1; 0 = empty
        self.seq = 0  # acks ever added: the next ack's number
        self._held = 0  # ring slots in use: min(seq, capacity), fewer only after a reset

    def __len__(self) -> int:
        return self._held

    @property
    def oldest(self) -> int:
        """The number of the oldest ack still remembered (== seq when empty)."""
        return self.seq - self._held

    def __contains__(self, trajectory_id: object) -> bool:
        return isinstance(trajectory_id, str) and self._find(fingerprint(trajectory_id)) >= 0

    def add(self, trajectory_id: str) -> int:
        """Remember one ack; returns its number."""
        return self._add(fingerprint(trajectory_id))

    def snapshot(self) -> bytes:
        """The remembered fingerprints, oldest first, as little-endian u64s (for `reset`)."""
        start = self.oldest % self.capacity
        end = start + self._held
        ring = self._ring
        if end <= self.capacity:
            out = ring[start:end]
        else:
            out = ring[start:] + ring[: end - self.capacity]
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes()

    def reset(self, seq: int, fingerprints: bytes) -> None:
        """Forget everything, then remember `fingerprints` (a `snapshot`) as acks up to `seq`."""
        fps = array("Q", fingerprints)
        if sys.byteorder == "big":
            fps.byteswap()
        if len(fps) > self.capacity:  # the window shrank across a restart: keep the newest
            fps = fps[len(fps) - self.capacity :]
        memoryview(self._index).cast("B")[:] = bytes(4 * self._slots)
        memoryview(self._ring).cast("B")[:] = bytes(8 * self.capacity)
        self.seq = seq - len(fps)
        self._held = 0
        for fp in fps:
            self._add(fp)

    # --- the index -----------------------------------------------------------------------------

    def _find(self, fp: int) -> int:
        """The index slot pointing at `fp`'s newest ring slot, or -1."""
        index, ring, mask = self._index, self._ring, self._mask
        i = fp & mask
        while True:
            p = index[i]
            if p == 0:
                return -1
            if ring[p - 1] == fp:
                return i
            i = (i + 1) & mask

    def _add(self, fp: int) -> int:
        seq = self.seq
        pos = seq % self.capacity
        if self._held == self.capacity:  # full: the oldest leaves
            self._evict(pos)
        else:
            self._held += 1
        self._ring[pos] = fp
        index, ring, mask = self._index, self._ring, self._mask
        i = fp & mask
        while True:
            p = index[i]
            if p == 0 or (p - 1 != pos and ring[p - 1] == fp):
                break  # an empty slot, or the slot of an older ack of the same fingerprint
            i = (i + 1) & mask
        index[i] = pos + 1
        self.seq = seq + 1
        return seq

    def _evict(self, pos: int) -> None:
        fp = self._ring[pos]
        self._ring[pos] = 0
        if fp == 0:
            return
        index, mask = self._index, self._mask
        i = fp & mask
        while True:  # the index slot pointing at this ring slot; absent if a newer ack took over
            p = index[i]
            if p == 0:
                return
            if p == pos + 1:
                break
            i = (i + 1) & mask
        ring = self._ring
        j = i
        while True:  # backward-shift deletion keeps every probe chain unbroken
            j = (j + 1) & mask
            p = index[j]
            if p == 0:
                break
            home = ring[p - 1] & mask
            if (j - home) & mask >= (j - i) & mask:  # j's home is not within (i, j]
                index[i] = p
                i = j
        index[i] = 0


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
        self.ready: list[_Entry] = []  # a heap: oldest policy version first, then ready order
        self._ready_seq = itertools.count()
        self.leases: dict[str, _Lease] = {}
        self.pending_ids: dict[str, int] = {}  # unacked id -> its segment (0: no log)
        self.acked_window = AckedWindow(max_seen_ids)  # the last max_seen_ids acks
        # segment -> the newest ack number whose latest durable record (ack or window) is there
        self.window_homes: dict[int, int] = {}
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
        window = self.acked_window
        for segment, payload in self.log.replay():
            record = _decoder.decode(payload)
            if isinstance(record, _Stored):  # logged only if it was no duplicate then
                t = record.trajectory
                if t.id not in pending:
                    pending[t.id] = (t, segment)
            elif isinstance(record, _AckedIds):
                for i in record.ids:
                    pending.pop(i, None)
                    window.add(i)
                if record.ids:
                    self.window_homes[segment] = window.seq - 1
            else:  # everything acked before it is in it
                window.reset(record.seq, record.fingerprints)
                self.window_homes = {segment: window.seq - 1}
        for t, segment in pending.values():  # insertion order: publish order
            self._admit(t, segment)
        if len(pending) > self.max_pending:
            log.warning("broker.replay_over_limit", pending=len(pending), limit=self.max_pending)
        log.info(
            "broker.replayed",
            pending=len(pending),
            ready_groups=len(self.ready),
            acked_ids=len(self.acked_window),
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
        if t.id in self.pending_ids or t.id in self.acked_window:
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
        ready = self.ready
        entries = [heapq.heappop(ready) for _ in range(min(max_groups, len(ready)))]
        if not entries:
            return "", []
        lease = f"lease-{self._lease_prefix}-{next(self._lease_ids)}"
        held = _Lease(entries, now + lease_s)
        self.leases[lease] = held
        return lease, held.groups

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
            self.acked_window.add(i)
        if ids:
            self.window_homes[segment] = self.acked_window.seq - 1
        self.acked += len(ids)
        self._compact()
        return len(ids)

    def expire(self, now: float) -> list[str]:
        """End every lease past its deadline; its groups go back under their original keys."""
        expired = [name for name, lease in self.leases.items() if lease.deadline <= now]
        for name in expired:
            for entry in self.leases.pop(name).entries:
                heapq.heappush(self.ready, entry)
        if expired:
            log.info("broker.leases_expired", leases=len(expired))
        return expired

    def leased(self) -> int:
        return sum(len(g) for lease in self.leases.values() for _, _, g in lease.entries)

    # --- internals -----------------------------------------------------------------------------

    def _admit(self, t: Trajectory, segment: int) -> None:
        self.pending_ids[t.id] = segment
        self.live[segment] += 1
        group = self.open_groups.setdefault(t.group_id, [])
        group.append(t)
        if len(group) >= max(t.group_size, 1):
            del self.open_groups[t.group_id]
            group.sort(key=lambda x: x.sample)
            heapq.heappush(self.ready, (group_version(group), next(self._ready_seq), group))

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
        window = self.acked_window
        carried = 0
        if any(self.window_homes.get(s, -1) >= window.oldest for s in doomed):
            # a remembered ack would go with them: write the whole window first
            snapshot = window.snapshot()
            home = self.log.append(_encoder.encode(_Window(window.seq, snapshot)))
            self.log.sync()
            self.window_homes = {home: window.seq - 1}
            carried = len(window)
        for s in doomed:
            self.log.delete(s)
            self.live.pop(s, None)
            self.window_homes.pop(s, None)
        self.compacted_segments += len(doomed)
        log.info("broker.compacted", segments=len(doomed), carried_ids=carried)


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
        self._jsonl_size = 0  # bytes in the current `jsonl` file
        self._jsonl_max_bytes = cfg.jsonl_max_mb << 20  # 0: no limit; tests set bytes directly
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
            self._open_jsonl()

    async def close(self) -> None:
        self.core.close()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_jsonl(self) -> None:
        cfg: BrokerConfig = self.config
        assert cfg.jsonl
        self._file = open(cfg.jsonl, "ab")  # noqa: SIM115 - closed in close() or _rotate_jsonl()
        self._jsonl_size = os.fstat(self._file.fileno()).st_size

    def _rotate_jsonl(self) -> None:
        """`jsonl` -> `jsonl.1` -> ... -> `jsonl.{keep}`, the oldest deleted; a fresh `jsonl`."""
        cfg: BrokerConfig = self.config
        assert cfg.jsonl and self._file is not None
        self._file.close()
        path = cfg.jsonl
        if cfg.jsonl_keep == 0:
            os.unlink(path)
        else:
            for i in range(cfg.jsonl_keep - 1, 0, -1):
                if os.path.exists(f"{path}.{i}"):
                    os.replace(f"{path}.{i}", f"{path}.{i + 1}")  # replaces the oldest
            os.replace(path, f"{path}.1")
        log.info("broker.jsonl_rotated", path=path, bytes=self._jsonl_size, keep=cfg.jsonl_keep)
        self._open_jsonl()

    def _write_jsonl(self, t: Trajectory) -> None:
        """Append one line, rotating first if it would take the file past the limit (a line
        longer than the limit gets a file of its own)."""
        assert self._file is not None
        line = self._encoder.encode(t) + b"\n"
        limit = self._jsonl_max_bytes
        if limit and self._jsonl_size and self._jsonl_size + len(line) > limit:
            self._rotate_jsonl()
        self._file.write(line)
        self._file.flush()
        self._jsonl_size += len(line)

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
            self._write_jsonl(t)
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
