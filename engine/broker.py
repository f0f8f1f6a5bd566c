"""Rollout broker, first version: takes trajectories, drops duplicate ids, hands out whole groups.

Learners `Pull` complete GRPO groups (every sample of one case), which move to a lease until
`Ack`. Trajectories are optionally appended to a JSON-lines file for people and tools. Durability
(segment log, replay, lease expiry, compaction) comes with the learning loop.
"""

from __future__ import annotations

import collections
import itertools
from pathlib import Path
from typing import IO

import msgspec
import structlog

from engine.actor import Actor, ActorError, handles
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
    jsonl: str | None = None  # append every accepted trajectory here
    max_seen_ids: int = 1_000_000  # duplicate detection window


class Broker(Actor):
    service = "broker"
    Config = BrokerConfig

    def __init__(self, config: BrokerConfig | None = None) -> None:
        super().__init__(config or BrokerConfig())
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.open_groups: dict[str, list[Trajectory]] = {}
        self.ready: collections.deque[list[Trajectory]] = collections.deque()
        self.leases: dict[str, list[list[Trajectory]]] = {}
        self._lease_ids = itertools.count(1)
        self.received = 0
        self.duplicates = 0
        self.acked = 0
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()

    async def start(self) -> None:
        if self.config.jsonl:
            Path(self.config.jsonl).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.config.jsonl, "ab")  # noqa: SIM115 - closed in close()

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @handles(Publish)
    def publish(self, msg: Publish) -> Published:
        t = msg.trajectory
        if t.id in self.seen:
            self.duplicates += 1
            return Published(t.id, duplicate=True)
        self.seen[t.id] = None
        if len(self.seen) > self.config.max_seen_ids:
            self.seen.popitem(last=False)
        self.received += 1
        if self._file is not None:
            self._file.write(self._encoder.encode(t) + b"\n")
            self._file.flush()
        group = self.open_groups.setdefault(t.group_id, [])
        group.append(t)
        if len(group) >= max(t.group_size, 1):
            del self.open_groups[t.group_id]
            self.ready.append(sorted(group, key=lambda x: x.sample))
        return Published(t.id)

    @handles(Pull)
    def pull(self, msg: Pull) -> Groups:
        groups = [self.ready.popleft() for _ in range(min(msg.max_groups, len(self.ready)))]
        lease = ""
        if groups:
            lease = f"lease-{next(self._lease_ids)}"
            self.leases[lease] = groups
        return Groups(lease=lease, groups=groups)

    @handles(Ack)
    def ack(self, msg: Ack) -> Acked:
        groups = self.leases.pop(msg.lease, None)
        if groups is None:
            raise ActorError(ErrorCode.NOT_FOUND, f"no open lease {msg.lease!r}")
        count = sum(len(g) for g in groups)
        self.acked += count
        return Acked(count)

    @handles(BrokerStatsQuery)
    def stats(self, msg: BrokerStatsQuery) -> BrokerStats:
        return BrokerStats(
            received=self.received,
            duplicates=self.duplicates,
            pending=sum(len(g) for g in self.ready)
            + sum(len(g) for g in self.open_groups.values()),
            leased=sum(len(g) for gs in self.leases.values() for g in gs),
            acked=self.acked,
        )
