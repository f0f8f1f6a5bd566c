"""From leased GRPO groups to training rows: a whole trajectory per row when its turns chain.

A trajectory's reward (the Judge's `Verdict.reward`; an aborted episode without a verdict gets
`aborted_reward`) is normalised within its group (all samples of one case) into an advantage that
every turn of the trajectory shares. A turn trains on its completion tokens given its prompt, with
the log-probabilities and the policy version the agent recorded when it generated them, so the
learner can correct for stale behaviour policies. Turns without token ids (a scripted or API agent)
are skipped: there is nothing to train on.

Packing: when a turn's prompt starts with the previous turn's prompt and completion (the `hf`
agent's prompts do, until the history is cut to fit), the turn joins the previous turn's row: the
row's ids are the latest prompt and completion and its spans mark every completion in them, so one
forward pass scores the whole episode instead of one pass per turn over ever longer prompts.

Pure Python plus torch for the advantage arithmetic; no model, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols import Diagnose, Terminal, Trajectory, unpack_floats, unpack_ids

__all__ = ["Row", "TrainBatch", "build_batch", "has_signal", "made_before", "reward_of"]


@dataclass(frozen=True)
class Row:
    """Token ids and the generated completions in them (`spans`, each `(start, length)`)."""

    ids: list[int]
    spans: list[tuple[int, int]]
    behav_logprobs: list[float]  # one per completion token, spans in order
    advantage: float
    versions: list[int]  # the policy version that generated each span

    @classmethod
    def turn(
        cls,
        prompt: list[int],
        completion: list[int],
        behav_logprobs: list[float],
        advantage: float,
        version: int,
    ) -> Row:
        """One turn: its prompt, then its completion."""
        spans = [(len(prompt), len(completion))]
        return cls([*prompt, *completion], spans, list(behav_logprobs), advantage, [version])

    @property
    def completion(self) -> list[int]:
        """Every trained token, spans in order."""
        return [t for start, n in self.spans for t in self.ids[start : start + n]]

    @property
    def tokens(self) -> int:
        return sum(n for _, n in self.spans)

    @property
    def version(self) -> int:
        """The oldest policy version among the spans."""
        return min(self.versions)


@dataclass
class TrainBatch:
    rows: list[Row]
    trajectories: int
    groups: int
    rewards: list[float] = field(default_factory=list)  # one per trajectory
    correct: list[bool] = field(default_factory=list)
    exam_f1: list[float] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # one per row
    diagnoses: set[str] = field(default_factory=set)  # distinct ones: a collapse shows here
    aborted: int = 0
    skipped_turns: int = 0  # turns with no token ids, or ids and logprobs that disagree
    filtered: int = 0  # groups consumed without training: every sample had the same reward
    dropped: int = 0  # trajectories acked unused: made before the learner's floor (`made_before`)

    def merge(self, other: TrainBatch, *, trained: bool = True) -> None:
        """Add `other`'s episode statistics (not its rows); `trained=False` for groups that were
        consumed but filtered out, whose turns' versions are no training data's staleness."""
        self.trajectories += other.trajectories
        self.groups += other.groups
        self.rewards += other.rewards
        self.correct += other.correct
        self.exam_f1 += other.exam_f1
        self.turns += other.turns
        self.diagnoses |= other.diagnoses
        self.aborted += other.aborted
        self.dropped += other.dropped
        self.filtered += other.filtered if trained else other.groups
        if trained:
            self.versions += other.versions
            self.skipped_turns += other.skipped_turns

    def stats(self, learner_version: int) -> dict[str, float]:
        """Episode-level means of what the batch holds, and staleness against the learner."""
        n = max(len(self.rewards), 1)
        stale = [learner_version - v for v in self.versions] or [0]
        return {
            "trajectories": float(self.trajectories),
            "groups": float(self.groups),
            "rows": float(len(self.rows)),
            "reward": sum(self.rewards) / n,
            "accuracy": sum(self.correct) / n,
            "exam_f1": sum(self.exam_f1) / n,
            "turns": sum(self.turns) / n,
            "distinct_diagnoses": float(len(self.diagnoses)),
            "aborted": float(self.aborted),
            "staleness_mean": sum(stale) / len(stale),
            "staleness_max": float(max(stale)),
            "skipped_turns": float(self.skipped_turns),
            "filtered_groups": float(self.filtered),
            "dropped_old": float(self.dropped),
        }


def _advantages(
    rewards: list[float], groups: list[int], scale: bool, std_floor: float
) -> list[float]:
    """GRPO: `(r - group mean) / max(group std, std_floor)` for every sample of the batch in one
    call; 0 in a group with no spread."""
    import torch

    from trainers.grpo import group_advantages  # torch, imported when a batch is built

    r = torch.tensor(rewards, dtype=torch.float64)
    ids = torch.tensor(groups, dtype=torch.long)
    return group_advantages(r, ids, scale=scale, std_floor=std_floor).tolist()


def reward_of(t: Trajectory, aborted_reward: float = 0.0) -> float:
    """The Judge's reward, or `aborted_reward` for an episode that ended without a verdict."""
    return t.verdict.reward if t.verdict is not None else aborted_reward


def has_signal(group: list[Trajectory], aborted_reward: float = 0.0) -> bool:
    """Whether the group's rewards differ: a group whose samples all scored the same has zero
    advantage everywhere and teaches the clipped surrogate nothing (DAPO's dynamic sampling
    filters such groups out)."""
    return len({reward_of(t, aborted_reward) for t in group}) > 1


def made_before(group: list[Trajectory], version: int) -> bool:
    """Whether any generated turn of the group (one with token ids) came from a policy older than
    `version`: after a cold start, those are the random policy's episodes the clone replaced."""
    return any(t.token_ids and t.policy_version < version for traj in group for t in traj.turns)


def build_batch(
    groups: list[list[Trajectory]],
    *,
    aborted_reward: float = 0.0,
    scale: bool = True,
    std_floor: float = 0.0,
    pack: bool = True,
) -> TrainBatch:
    batch = TrainBatch(rows=[], trajectories=0, groups=len(groups))
    members = [(g, t) for g, group in enumerate(groups) for t in group]
    for _, t in members:
        batch.rewards.append(reward_of(t, aborted_reward))
        batch.correct.append(bool(t.verdict and t.verdict.correct))
        batch.exam_f1.append(t.verdict.exam_f1 if t.verdict is not None else 0.0)
        batch.turns.append(len(t.turns))
        batch.aborted += t.terminal is Terminal.ABORTED
        last = t.turns[-1].action if t.turns else None
        if isinstance(last, Diagnose):
            batch.diagnoses.add(last.name.lower())
    batch.trajectories = len(members)
    groups_of = [g for g, _ in members]
    advantages = _advantages(batch.rewards, groups_of, scale, std_floor) if members else []
    for (_, t), adv in zip(members, advantages, strict=True):
        row: Row | None = None
        for turn in t.turns:
            ids = unpack_ids(turn.token_ids)
            logprobs = unpack_floats(turn.logprobs)
            if not ids or len(ids) != len(logprobs):
                batch.skipped_turns += 1
                continue
            prompt = unpack_ids(turn.prompt_ids)
            batch.versions.append(turn.policy_version)
            if pack and row is not None and _extends(prompt, row.ids):
                row.spans.append((len(prompt), len(ids)))
                row.ids[:] = [*prompt, *ids]
                row.behav_logprobs.extend(logprobs)
                row.versions.append(turn.policy_version)
                continue
            row = Row.turn(prompt, ids, logprobs, adv, turn.policy_version)
            batch.rows.append(row)
    return batch


def _extends(prompt: list[int], ids: list[int]) -> bool:
    return len(prompt) > len(ids) and prompt[: len(ids)] == ids
