"""Training rows from leased groups: advantages per group, one row per generated turn."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import Terminal, Trajectory, Turn, pack_floats, pack_ids
from tests.fakes import verdict
from trainers.batch import build_batch

pytest.importorskip("torch")


def turn(i: int, ids: list[int], logprobs: list[float], version: int = 0) -> Turn:
    return Turn(
        index=i,
        text="",
        action=None,
        observation=None,
        prompt_ids=pack_ids([1, 2, 3]),
        token_ids=pack_ids(ids),
        logprobs=pack_floats(logprobs),
        policy_version=version,
    )


def traj(group: str, sample: int, correct: bool | None, turns: list[Turn]) -> Trajectory:
    return Trajectory(
        id=f"{group}.{sample}",
        episode_id=f"{group}.{sample}",
        case_id="c",
        group_id=group,
        sample=sample,
        group_size=2,
        turns=turns,
        terminal=Terminal.ABORTED if correct is None else Terminal.DIAGNOSED,
        reason="x",
        verdict=None if correct is None else verdict(correct),
    )


def test_rows_share_their_trajectorys_group_normalised_advantage() -> None:
    right = traj("g", 0, True, [turn(0, [5], [-0.1], 3), turn(1, [6, 7], [-0.2, 0.0], 4)])
    wrong = traj("g", 1, False, [turn(0, [8], [-1.0], 4)])
    batch = build_batch([[right, wrong]])
    assert [r.completion for r in batch.rows] == [[5], [6, 7], [8]]
    assert [r.advantage for r in batch.rows] == pytest.approx([1.0, 1.0, -1.0], abs=1e-5)
    assert [r.version for r in batch.rows] == [3, 4, 4]
    stats = batch.stats(learner_version=5)
    assert stats["accuracy"] == 0.5 and stats["reward"] == 0.5
    assert stats["staleness_mean"] == pytest.approx((2 + 1 + 1) / 3) and stats["staleness_max"] == 2


def test_aborted_episodes_get_the_aborted_reward_and_scripted_turns_are_skipped() -> None:
    scripted = Turn(index=0, text="", action=None, observation=None)
    bad = turn(1, [1, 2], [-0.5])  # two ids, one logprob
    lost = traj("g", 0, None, [scripted, bad, turn(2, [4], [-0.3])])
    fine = traj("g", 1, False, [turn(0, [9], [-0.3])])
    batch = build_batch([[lost, fine]], aborted_reward=-1.0)
    assert batch.aborted == 1 and batch.skipped_turns == 2
    assert batch.rewards == [-1.0, 0.0]
    assert batch.rows[0].advantage < 0 < batch.rows[1].advantage


@given(st.lists(st.booleans(), min_size=1, max_size=8))
def test_a_group_with_one_outcome_teaches_nothing(outcomes: list[bool]) -> None:
    same = [traj("g", i, outcomes[0], [turn(0, [1], [-0.5])]) for i in range(len(outcomes))]
    mixed = [traj("h", i, c, [turn(0, [1], [-0.5])]) for i, c in enumerate(outcomes)]
    batch = build_batch([same, mixed])
    assert all(r.advantage == 0.0 for r in batch.rows[: len(same)])
    advs = [r.advantage for r in batch.rows[len(same) :]]
    assert sum(advs) == pytest.approx(0.0, abs=1e-6)  # centred within the group
    assert any(advs) == (len(set(outcomes)) > 1)
