"""Training rows from leased groups: advantages per group, one row per generated turn."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import Terminal, Trajectory, Turn, pack_floats, pack_ids
from tests.fakes import verdict
from trainers.batch import build_batch, has_signal

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
    assert not has_signal(same) and has_signal(mixed) == any(advs)  # what dynamic sampling drops


def test_filtered_groups_count_in_the_episode_statistics_but_not_in_staleness() -> None:
    right, wrong = traj("g", 0, True, [turn(0, [1], [-0.1], 7)]), traj("g", 1, False, [])
    trained = build_batch([[right, wrong]])
    dropped = build_batch([[traj("h", i, True, [turn(0, [1], [-0.1], 2)]) for i in range(2)]])
    trained.merge(dropped, trained=False)
    stats = trained.stats(learner_version=8)
    assert stats["trajectories"] == 4 and stats["groups"] == 2 and stats["filtered_groups"] == 1
    assert stats["accuracy"] == 0.75  # the filtered group's two right answers count
    assert stats["staleness_max"] == 1  # its version-2 turns were not trained on


def chained(group: str, sample: int, correct: bool, actions: list[int]) -> Trajectory:
    """Turns whose prompts chain as the hf agent's do: prompt + action + observation + cue."""
    turns, prompt = [], [1, 20, 21, 2]  # bos, intro, cue
    for i, action in enumerate(actions):
        t = turn(i, [action], [-0.5 - i], version=i)
        turns.append(msgspec.structs.replace(t, prompt_ids=pack_ids(prompt)))
        prompt = [*prompt, action, 30 + i, 31, 2]  # the action, what came back, the next cue
    return traj(group, sample, correct, turns)


def test_turns_that_chain_pack_into_one_row_per_trajectory() -> None:
    a = chained("g", 0, True, [40, 41, 42])
    b = chained("g", 1, False, [43])
    broken = chained("g", 2, False, [44, 45])  # the second prompt does not extend the first
    broken.turns[1] = msgspec.structs.replace(broken.turns[1], prompt_ids=pack_ids([1, 2]))
    batch = build_batch([[a, b, broken]])
    assert [len(r.spans) for r in batch.rows] == [3, 1, 1, 1]
    first = batch.rows[0]
    assert first.completion == [40, 41, 42] and first.versions == [0, 1, 2]
    assert first.behav_logprobs == [-0.5, -1.5, -2.5]
    assert [first.ids[s] for s, _ in first.spans] == [40, 41, 42]
    assert len(batch.versions) == 6  # staleness still counts turns
    flat = build_batch([[a, b, broken]], pack=False)
    assert len(flat.rows) == 6
    assert sorted(t for r in flat.rows for t in r.completion) == sorted(
        t for r in batch.rows for t in r.completion
    )
