"""The durable broker: the segment log on its own, the broker core as a hypothesis state machine
(publish / pull / lease expiry / ack / restart, no sockets or sleeps), and a real SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.actor import ActorError
from engine.broker import BrokerCore
from engine.segment_log import CorruptLog, SegmentLog
from protocols import ErrorCode, Terminal, Trajectory

ROOT = Path(__file__).resolve().parent.parent


def traj(group: str, sample: int, size: int, pad: int = 0) -> Trajectory:
    return Trajectory(
        id=f"{group}.{sample}/t",
        episode_id=f"{group}.{sample}",
        case_id="c",
        group_id=group,
        sample=sample,
        group_size=size,
        turns=[],
        terminal=Terminal.TRUNCATED,
        reason="turn cap" + "x" * pad,
    )


# --- the segment log -----------------------------------------------------------------------------


def replay(directory: Path, **kw: int) -> tuple[SegmentLog, list[bytes]]:
    seg = SegmentLog(directory, **kw)
    return seg, [p for _, p in seg.replay()]


@pytest.mark.parametrize("fsync_every", [0, 1, 3])
def test_log_round_trips_and_rolls_segments(tmp_path: Path, fsync_every: int) -> None:
    seg, got = replay(tmp_path, segment_bytes=100, fsync_every=fsync_every)
    assert got == []
    records = [bytes([i]) * (i * 7) for i in range(20)]
    numbers = [seg.append(r) for r in records]
    assert numbers == sorted(numbers) and len(set(numbers)) > 5  # rolled at the size limit
    seg.close()
    seg, got = replay(tmp_path, segment_bytes=100)
    assert got == records
    seg.append(b"after")  # appends continue after a replay
    seg.close()
    assert replay(tmp_path)[1] == [*records, b"after"]


@pytest.mark.parametrize(
    "tail",
    [b"\x05", struct.pack("<II", 1000, 0) + b"partial", struct.pack("<II", 3, 0) + b"bad"],
    ids=["short header", "short payload", "bad checksum at the end"],
)
def test_torn_last_record_is_truncated(tmp_path: Path, tail: bytes) -> None:
    seg, _ = replay(tmp_path)
    seg.append(b"one")
    seg.append(b"two")
    seg.close()
    path = seg.path(seg.segments()[-1])
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(tail)
    seg, got = replay(tmp_path)
    assert got == [b"one", b"two"] and path.stat().st_size == good
    assert seg.truncated_bytes == len(tail)
    seg.append(b"three")
    seg.close()
    assert replay(tmp_path)[1] == [b"one", b"two", b"three"]


def test_corruption_in_the_middle_is_refused(tmp_path: Path) -> None:
    seg, _ = replay(tmp_path)
    for r in (b"one", b"two", b"three"):
        seg.append(r)
    seg.close()
    path = seg.path(seg.segments()[-1])
    data = bytearray(path.read_bytes())
    data[8 + 3 + 8] ^= 0xFF  # first payload byte of the second record
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLog) as exc:
        replay(tmp_path)
    assert exc.value.path == path and exc.value.offset == 8 + 3
    assert path.name in str(exc.value) and "byte 11" in str(exc.value)


def test_torn_record_in_a_closed_segment_is_refused(tmp_path: Path) -> None:
    seg, _ = replay(tmp_path, segment_bytes=20)
    for r in (b"aaaaaaaa", b"bbbbbbbb", b"cccccccc"):
        seg.append(r)
    seg.close()
    first = seg.path(seg.segments()[0])
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(CorruptLog, match=first.name):
        replay(tmp_path, segment_bytes=20)


def test_append_before_replay_is_refused(tmp_path: Path) -> None:
    seg, _ = replay(tmp_path)
    seg.append(b"x")
    seg.close()
    with pytest.raises(RuntimeError):
        SegmentLog(tmp_path).append(b"y")


# --- the core, directly --------------------------------------------------------------------------


def test_restart_rebuilds_groups_and_remembers_acks(tmp_path: Path) -> None:
    core = BrokerCore.open(tmp_path)
    for t in (traj("a", 0, 2), traj("a", 1, 2), traj("b", 0, 1), traj("c", 0, 2)):
        assert core.publish(t)
    lease, groups = core.pull(1, 10.0, now=0.0)
    assert [t.id for t in groups[0]] == ["a.0/t", "a.1/t"]
    assert core.ack(lease, now=1.0) == 2
    lease_b, _ = core.pull(1, 10.0, now=1.0)  # b leased, never acked
    core.close()

    core = BrokerCore.open(tmp_path)
    assert not core.publish(traj("a", 0, 2))  # acked before the restart: a duplicate
    assert not core.publish(traj("c", 0, 2))  # pending: a duplicate
    with pytest.raises(ActorError) as exc:
        core.ack(lease_b, now=2.0)  # leases do not survive a restart
    assert exc.value.code is ErrorCode.NOT_FOUND
    _, groups = core.pull(5, 10.0, now=0.0)
    assert [[t.id for t in g] for g in groups] == [["b.0/t"]]  # c is still incomplete
    assert core.publish(traj("c", 1, 2))
    assert [[t.id for t in g] for g in core.pull(5, 10.0, now=0.0)[1]] == [["c.0/t", "c.1/t"]]


def test_expired_lease_is_redelivered_and_its_ack_refused() -> None:
    core = BrokerCore()
    core.publish(traj("a", 0, 1))
    lease, groups = core.pull(1, lease_s=5.0, now=100.0)
    assert core.pull(1, 5.0, now=104.0) == ("", [])
    lease2, again = core.pull(1, 5.0, now=105.0)
    assert again == groups and lease2 != lease
    with pytest.raises(ActorError) as exc:
        core.ack(lease, now=105.0)
    assert exc.value.code is ErrorCode.NOT_FOUND
    assert core.ack(lease2, now=106.0) == 1


def test_backpressure_is_overloaded_and_logs_nothing(tmp_path: Path) -> None:
    core = BrokerCore.open(tmp_path, max_pending=2)
    core.publish(traj("a", 0, 1))
    core.publish(traj("b", 0, 1))
    with pytest.raises(ActorError) as exc:
        core.publish(traj("c", 0, 1))
    assert exc.value.code is ErrorCode.OVERLOADED
    assert not core.publish(traj("a", 0, 1))  # a duplicate is still answered
    lease, _ = core.pull(1, 5.0, now=0.0)
    core.ack(lease, now=0.0)
    assert core.publish(traj("c", 0, 1))  # room again after an ack
    core.close()
    assert BrokerCore.open(tmp_path).pending == 2


def test_acked_segments_are_compacted_and_acks_survive_it(tmp_path: Path) -> None:
    core = BrokerCore.open(tmp_path, segment_bytes=400, fsync_every=0)
    for i in range(40):
        core.publish(traj(f"g{i}", 0, 1, pad=50))
    assert len(core.log.segments()) > 5
    while True:
        lease, groups = core.pull(7, 5.0, now=0.0)
        if not groups:
            break
        core.ack(lease, now=0.0)
    assert len(core.log.segments()) <= 2 and core.compacted_segments > 5
    core.close()
    core = BrokerCore.open(tmp_path, segment_bytes=400, fsync_every=0)
    assert core.pending == 0
    assert not any(core.publish(traj(f"g{i}", 0, 1, pad=50)) for i in range(40))


# --- the state machine ---------------------------------------------------------------------------

GROUPS = {f"g{k}": k % 3 + 1 for k in range(6)}  # group id -> size
IDS = [f"{g}.{s}/t" for g, size in GROUPS.items() for s in range(size)]
MAX_PENDING = 7  # > the most that incomplete groups can hold (6), so no deadlock
MAX_SEEN = 5  # a window smaller than the ids, so acked ids leave it and come back


class BrokerModel(RuleBasedStateMachine):
    """The broker core against a model of what must hold, with restarts from the same log.

    The acked window is small, so ids are acked, forgotten after `MAX_SEEN` later acks, published
    again and delivered again: the model checks the exact window boundary (an id among the last
    `MAX_SEEN` acks is a duplicate, an older one is not) through compaction and restarts.
    """

    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="broker-model-")
        self.core = self.open()
        self.now = 0.0
        self.pending: set[str] = set()  # published, not acked
        self.acks: list[str] = []  # every ack, in order
        self.leases: dict[str, tuple[list[str], float]] = {}  # live per the model
        self.dead: list[str] = []  # lease names that must be refused

    def open(self) -> BrokerCore:
        return BrokerCore.open(
            self.dir,
            segment_bytes=220,
            fsync_every=0,
            max_pending=MAX_PENDING,
            max_seen_ids=MAX_SEEN,
        )

    def teardown(self) -> None:
        if hasattr(self, "core"):
            self.core.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def window(self) -> set[str]:
        return set(self.acks[-MAX_SEEN:])

    def leased_ids(self) -> set[str]:
        return {i for ids, deadline in self.leases.values() if deadline > self.now for i in ids}

    def available_groups(self) -> int:
        free = self.pending - self.leased_ids()
        return sum(all(f"{g}.{s}/t" in free for s in range(size)) for g, size in GROUPS.items())

    def acked(self, ids: list[str]) -> None:
        assert not set(ids) & self.window()  # delivered at most once after its ack
        self.pending -= set(ids)
        self.acks.extend(ids)

    @rule(group=st.sampled_from(sorted(GROUPS)), data=st.data())
    def publish(self, group: str, data: st.DataObject) -> None:
        size = GROUPS[group]
        t = traj(group, data.draw(st.integers(0, size - 1)), size)
        if t.id in self.pending or t.id in self.window():
            assert self.core.publish(t) is False
        elif len(self.pending) >= MAX_PENDING:
            with pytest.raises(ActorError) as exc:
                self.core.publish(t)
            assert exc.value.code is ErrorCode.OVERLOADED
        else:
            assert self.core.publish(t) is True  # new, or acked before the window
            self.pending.add(t.id)

    @rule(max_groups=st.integers(1, 3), lease_s=st.sampled_from([1.0, 5.0, 100.0]))
    def pull(self, max_groups: int, lease_s: float) -> None:
        expected = min(max_groups, self.available_groups())
        before = self.leased_ids()
        lease, groups = self.core.pull(max_groups, lease_s, self.now)
        assert len(groups) == expected
        if not groups:
            assert lease == ""
            return
        ids = [t.id for g in groups for t in g]
        assert len(ids) == len(set(ids))  # no duplicate ids
        assert set(ids) <= self.pending  # nothing acked is delivered again unless re-published
        assert not set(ids) & before  # nothing held by a live lease is handed out twice
        for g in groups:  # groups are complete
            assert {t.group_id for t in g} == {g[0].group_id}
            assert [t.sample for t in g] == list(range(GROUPS[g[0].group_id]))
        assert lease not in self.leases and lease not in self.dead
        self.leases[lease] = (ids, self.now + lease_s)

    @rule()
    def drain(self) -> None:
        """A learner catching up: pull everything available and ack it (drives compaction)."""
        while True:
            lease, groups = self.core.pull(3, 1000.0, self.now)
            if not groups:
                break
            ids = [t.id for g in groups for t in g]
            assert set(ids) <= self.pending - self.leased_ids()
            assert self.core.ack(lease, self.now) == len(ids)
            self.acked(ids)
            self.dead.append(lease)
        assert self.available_groups() == 0

    @rule(dt=st.sampled_from([0.5, 1.0, 4.0, 10.0, 40.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(sorted(self.leases)))
        ids, deadline = self.leases.pop(lease)
        self.dead.append(lease)
        if deadline <= self.now:  # expired: refused, its groups are redelivered instead
            with pytest.raises(ActorError) as exc:
                self.core.ack(lease, self.now)
            assert exc.value.code is ErrorCode.NOT_FOUND
        else:
            assert self.core.ack(lease, self.now) == len(ids)
            self.acked(ids)

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def ack_dead_lease(self, data: st.DataObject) -> None:
        with pytest.raises(ActorError) as exc:
            self.core.ack(data.draw(st.sampled_from(self.dead)), self.now)
        assert exc.value.code is ErrorCode.NOT_FOUND

    @rule(torn=st.booleans())
    def restart(self, torn: bool) -> None:
        self.core.close()
        if torn and self.core.log.segments():
            # the process died mid-append: a partial record at the end of the log
            last = self.core.log.path(self.core.log.segments()[-1])
            with open(last, "ab") as f:
                f.write(struct.pack("<II", 500, 0) + b"half a rec")
        self.core = self.open()
        self.dead.extend(self.leases)  # leases do not survive a restart
        self.leases.clear()

    @invariant()
    def counts_match(self) -> None:
        if not hasattr(self, "core"):
            return
        assert self.core.pending == len(self.pending)
        self.core.expire(self.now)
        assert self.core.leased() == len(self.leased_ids())
        assert set(self.core.pending_ids) == self.pending

    @invariant()
    def window_matches(self) -> None:
        if not hasattr(self, "core"):
            return
        assert {i for i in IDS if i in self.core.acked_window} == self.window()
        assert len(self.core.acked_window) == min(len(self.acks), MAX_SEEN)


BrokerModel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=60, deadline=None, print_blob=True
)
test_broker_model = BrokerModel.TestCase


# --- kill -9 mid-run -----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys
    from engine.broker import BrokerCore
    from protocols import Terminal, Trajectory

    directory, out, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    core = BrokerCore.open(directory, segment_bytes=32768, fsync_every=1)
    f = open(out, "a", buffering=1)
    i = start
    while True:
        for sample in range(2):
            t = Trajectory(id=f"{i}.{sample}", episode_id=str(i), case_id="c", group_id=str(i),
                           sample=sample, group_size=2, turns=[], terminal=Terminal.TRUNCATED,
                           reason="x" * 3000)
            core.publish(t)
            f.write(f"P {t.id}\\n")
        if i % 3 == 0:
            lease, groups = core.pull(2, 60.0, now=0.0)
            if groups:
                core.ack(lease, now=0.0)
                f.write("".join(f"A {t.id}\\n" for g in groups for t in g))
        i += 1
    """
)


def run_and_kill(directory: Path, out: Path, start: int, lines: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(out), str(start)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "child died")
            if out.exists() and out.read_text().count("\n") >= lines:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("child made no progress")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_run_loses_nothing_published_and_redelivers_nothing_acked(
    tmp_path: Path,
) -> None:
    directory, out = tmp_path / "log", tmp_path / "ids.txt"
    for n, start in enumerate((0, 100_000)):
        run_and_kill(directory, out, start, lines=400 * (n + 1))
        text = out.read_text()
        complete = text[: text.rfind("\n") + 1]  # a torn last line was never confirmed
        published = {line[2:] for line in complete.splitlines() if line.startswith("P ")}
        acked = {line[2:] for line in complete.splitlines() if line.startswith("A ")}
        assert acked and published - acked

        core = BrokerCore.open(directory)
        remembered = {i for i in published if i in core.acked_window}
        assert published <= set(core.pending_ids) | remembered  # nothing lost
        assert not acked & set(core.pending_ids)  # nothing acked is pending again
        delivered: list[str] = []
        while True:
            lease, groups = core.pull(10, 60.0, now=0.0)
            if not groups:
                break
            delivered += [t.id for g in groups for t in g]
            core.ack(lease, now=0.0)
        assert not acked & set(delivered) and len(delivered) == len(set(delivered))
        assert (published - acked) - set(core.pending_ids) - set(delivered) <= remembered
        core.close()
        out.write_text(complete + "".join(f"A {i}\n" for i in delivered))
