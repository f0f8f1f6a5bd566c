"""The broker's memory is fixed: the acked window (`AckedWindow`) against a model, its exact
boundary through compaction and restarts, and no per-trajectory state left behind after acks."""

from __future__ import annotations

import collections
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.broker import AckedWindow, BrokerCore
from protocols import Terminal, Trajectory


def traj(n: int, pad: int = 0) -> Trajectory:
    return Trajectory(
        id=f"t{n}",
        episode_id=f"e{n}",
        case_id="c",
        group_id=f"g{n}",
        group_size=1,
        turns=[],
        terminal=Terminal.TRUNCATED,
        reason="x" * pad,
    )


# --- the window on its own -----------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 30)),  # few ids: re-acks and probe chains
        st.tuples(st.just("reload"), st.integers(1, 12)),  # snapshot -> a window of a new size
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 12), ops=ops)
def test_window_remembers_exactly_the_last_capacity_acks(capacity: int, ops: list) -> None:
    window = AckedWindow(capacity)
    model: collections.deque[str] = collections.deque(maxlen=capacity)
    for op, arg in ops:
        if op == "add":
            assert window.add(f"id-{arg}") == window.seq - 1
            model.append(f"id-{arg}")
        else:  # a restart from a snapshot, possibly with another max_seen_ids
            reloaded = AckedWindow(arg)
            reloaded.reset(window.seq, window.snapshot())
            window = reloaded
            model = collections.deque(model, maxlen=arg)
        assert {f"id-{i}" for i in range(31) if f"id-{i}" in window} == set(model)
        assert len(window) == len(model) and window.oldest == window.seq - len(model)


def test_window_boundary_and_bad_sizes() -> None:
    window = AckedWindow(3)
    for i in range(5):
        window.add(f"a{i}")
    assert [f"a{i}" in window for i in range(5)] == [False, False, True, True, True]
    window.add("a2")  # an id acked again takes a new slot; its old slot leaves first
    window.add("a5")
    assert [f"a{i}" in window for i in range(6)] == [False, False, True, False, True, True]
    assert 7 not in window  # not an id
    for bad in (0, -1, 1 << 40):
        with pytest.raises(ValueError, match="max_seen_ids"):
            AckedWindow(bad)
    with pytest.raises(ValueError, match="max_seen_ids"):
        BrokerCore(max_seen_ids=0)


def test_window_size_is_fixed_when_created() -> None:
    tracemalloc.start()
    try:
        window = AckedWindow(10_000)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50_000):
            window.add(f"id-{i}")
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 4096  # nothing allocated per ack (a few ints and frames at most)
    assert len(window) == 10_000 and "id-49999" in window and "id-39999" not in window


# --- the window in the broker --------------------------------------------------------------------


def drain(core: BrokerCore) -> list[str]:
    acked = []
    while True:
        lease, groups = core.pull(4, 10.0, now=0.0)
        if not groups:
            return acked
        core.ack(lease, now=0.0)
        acked += [t.id for g in groups for t in g]


def test_acked_ids_are_duplicates_exactly_within_the_window_across_compaction(
    tmp_path: Path,
) -> None:
    kw = {"segment_bytes": 300, "fsync_every": 0, "max_seen_ids": 8}
    core = BrokerCore.open(tmp_path, **kw)
    for n in range(30):
        assert core.publish(traj(n, pad=60))
    assert drain(core) == [f"t{n}" for n in range(30)]
    assert core.compacted_segments > 3  # the acks of t22..t29 outlived their segments
    core.close()
    core = BrokerCore.open(tmp_path, **kw)
    assert not any(core.publish(traj(n, pad=60)) for n in range(22, 30))  # the last 8 acks
    assert core.publish(traj(21, pad=60))  # the 9th latest ack: forgotten, accepted again
    assert drain(core) == ["t21"]  # delivered again: the documented limit
    assert not core.publish(traj(21, pad=60))
    assert core.publish(traj(22, pad=60))  # t21's second ack pushed t22 out
    core.close()


def test_nothing_grows_per_trajectory(tmp_path: Path) -> None:
    """Thousands of trajectories through a log of a dozen segments: the tables stay small and the
    Python heap (tracemalloc, not RSS: no allocator noise) does not grow with the count."""
    core = BrokerCore.open(tmp_path, segment_bytes=1 << 18, fsync_every=0, max_seen_ids=100_000)

    def run(start: int, count: int) -> None:
        for n in range(start, start + count):
            core.publish(traj(n, pad=200))
            if n % 4 == 3:
                drain(core)
        drain(core)

    run(0, 2000)  # warm-up: every table reaches its working size
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(2000, 6000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 16_384  # the old OrderedDict of acked ids: ~150 bytes per ack
    assert core.pending == 0 and not core.leases and not core.open_groups and not core.ready
    assert len(core.log.segments()) <= 2 and len(core.live) <= 2 and len(core.window_homes) <= 2
    assert len(core.acked_window) == 8000  # all remembered, in the memory allocated at start
    core.close()
