"""The broker hands out the groups of the oldest policy first (ties in ready order), through
expired leases and restarts, with a trajectory's version counted as the learner counts it."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.broker import BrokerCore, group_version, trajectory_version
from protocols import Trajectory, Turn, pack_floats, pack_ids
from tests.fakes import member
from trainers.batch import build_batch

# a trajectory's turns: (policy version, carries training tokens)
TurnSpec = tuple[int, bool]


def turn(index: int, version: int, tokens: bool = True) -> Turn:
    return Turn(
        index=index,
        text="t",
        action=None,
        observation=None,
        prompt_ids=pack_ids([1, 2]),
        token_ids=pack_ids([3, 4]) if tokens else b"",
        logprobs=pack_floats([-0.5, -0.25]) if tokens else b"",
        policy_version=version,
    )


def traj(group: str, sample: int, size: int, turns: list[TurnSpec]) -> Trajectory:
    return member(group, sample, size, [turn(i, v, tokens) for i, (v, tokens) in enumerate(turns)])


turn_specs = st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=3)


def key(turns_of_group: list[list[TurnSpec]]) -> int:
    """The model of `group_version`: the oldest version among turns with tokens, else -1."""
    return min((v for turns in turns_of_group for v, tokens in turns if tokens), default=-1)


@settings(max_examples=200, deadline=None)
@given(turns=turn_specs)
def test_trajectory_version_is_the_learners_staleness_version(turns: list[TurnSpec]) -> None:
    t = traj("g", 0, 1, turns)
    batch = build_batch([[t]])
    assert trajectory_version(t) == min(batch.versions, default=None)


def test_turns_without_matching_logprobs_do_not_count() -> None:
    short = Turn(
        index=2,
        text="x",
        action=None,
        observation=None,
        token_ids=pack_ids([1, 2]),
        logprobs=pack_floats([-1.0]),  # one log-probability for two tokens: not training data
        policy_version=0,
    )
    t = traj("g", 0, 1, [(5, True), (0, False)])
    t = Trajectory(**{f: getattr(t, f) for f in t.__struct_fields__} | {"turns": [*t.turns, short]})
    assert trajectory_version(t) == 5 == min(build_batch([[t]]).versions)
    assert group_version([t, traj("g", 1, 2, [(0, False)])]) == 5
    assert group_version([traj("g", 0, 1, [])]) == -1


@st.composite
def published_groups(draw: st.DrawFn) -> list[tuple[str, int, list[list[TurnSpec]]]]:
    """Groups (id, size, each sample's turns), in the order their samples get published below."""
    n = draw(st.integers(1, 10))
    return [
        (
            f"g{k}",
            size := draw(st.integers(1, 3)),
            [draw(turn_specs) for _ in range(size)],
        )
        for k in range(n)
    ]


@settings(max_examples=200, deadline=None)
@given(groups=published_groups(), data=st.data())
def test_pulls_come_out_oldest_version_first_then_in_ready_order(
    groups: list[tuple[str, int, list[list[TurnSpec]]]], data: st.DataObject
) -> None:
    core = BrokerCore()
    members = [(g, s, size, turns[s]) for g, size, turns in groups for s in range(size)]
    order = data.draw(st.permutations(members))  # samples of different groups interleaved
    ready: list[str] = []  # group ids in the order they became complete
    published: dict[str, int] = {}
    for g, s, size, turns in order:
        assert core.publish(traj(g, s, size, turns))
        published[g] = published.get(g, 0) + 1
        if published[g] == size:
            ready.append(g)
    keys = {g: (key(turns), ready.index(g)) for g, _, turns in groups}
    pulled: list[str] = []
    while True:
        lease, got = core.pull(data.draw(st.integers(1, 4)), 10.0, now=0.0)
        if not got:
            break
        pulled += [g[0].group_id for g in got]
        assert [t.sample for t in got[0]] == list(range(len(got[0])))
    assert [keys[g] for g in pulled] == sorted(keys.values())  # non-decreasing, nothing missing
    assert len(pulled) == len(groups)


def test_expired_groups_come_back_first_among_equals() -> None:
    core = BrokerCore()
    for g, v in (("a", 3), ("b", 3), ("c", 1), ("d", 3)):
        core.publish(traj(g, 0, 1, [(v, True)]))
    lease, got = core.pull(2, 5.0, now=0.0)
    assert [g[0].group_id for g in got] == ["c", "a"]
    core.publish(traj("e", 0, 1, [(2, True)]))
    _, got = core.pull(1, 100.0, now=1.0)
    assert [g[0].group_id for g in got] == ["e"]
    _, got = core.pull(5, 100.0, now=6.0)  # the first lease expired: c, then a ahead of b
    assert [g[0].group_id for g in got] == ["c", "a", "b", "d"]


def test_restart_keeps_the_order_of_pending_groups(tmp_path: Path) -> None:
    core = BrokerCore.open(tmp_path)
    publishes = [("a", 1, 2, 4), ("b", 0, 1, 2), ("c", 0, 2, 4), ("d", 0, 1, 1), ("a", 0, 2, 9)]
    publishes += [("e", 0, 1, 4), ("c", 1, 2, 7), ("f", 0, 1, 2), ("g", 0, 2, 0)]
    for g, s, size, v in publishes:
        core.publish(traj(g, s, size, [(v, True)]))
    lease, got = core.pull(1, 100.0, now=0.0)
    assert [g[0].group_id for g in got] == ["d"]
    core.ack(lease, now=0.0)
    core.pull(2, 100.0, now=0.0)  # b and f leased, never acked: a restart ends the lease
    before = [g[0].group_id for g in core.pull(10, 1.0, now=200.0)[1]]  # the lease expired
    core.close()
    after = [g[0].group_id for g in BrokerCore.open(tmp_path).pull(10, 1.0, now=0.0)[1]]
    assert before == after == ["b", "f", "a", "e", "c"]  # g is still incomplete
