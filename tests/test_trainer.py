"""The GRPO step on the real tiny policy: it moves probability toward rewarded actions, and a
checkpoint restores model, optimiser and version exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from actors.lm import PolicyConfig, encode_prompt, generate, sequence_logprobs  # noqa: E402
from trainers.batch import Row, TrainBatch  # noqa: E402
from trainers.trainer import OptimConfig, Trainer  # noqa: E402

TINY = PolicyConfig(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=600)


def prompt(policy) -> list[int]:  # noqa: ANN001
    return [policy.bos_id, *policy.tokenizer.encode("F 40 | chest pain").ids, policy.act_id]


def logprob_of(trainer: Trainer, ids: list[int], completion: list[int]) -> float:
    with torch.no_grad():
        return float(sequence_logprobs(trainer.policy, [ids], [completion])[0].sum())


def batch_for(trainer: Trainer, good: list[int], bad: list[int], ids: list[int]) -> TrainBatch:
    """A group of four: two samples of the rewarded action, two of the other."""
    rows = []
    for completion, adv in ((good, 1.0), (good, 1.0), (bad, -1.0), (bad, -1.0)):
        with torch.no_grad():
            behav = sequence_logprobs(trainer.policy, [ids], [completion])[0].tolist()
        rows.append(Row.turn(ids, completion, behav, adv, trainer.version))
    return TrainBatch(rows=rows, trajectories=4, groups=1)


def test_steps_raise_the_rewarded_action_and_lower_the_other() -> None:
    trainer = Trainer(TINY, OptimConfig(lr=1e-2))
    ids = prompt(trainer.policy)
    (good, _), (bad, _) = generate(trainer.policy, [ids, ids], seeds=[1, 2])
    if good == bad:
        (bad, _) = generate(trainer.policy, [ids], seeds=[3])[0]
    assert good != bad
    before = logprob_of(trainer, ids, good), logprob_of(trainer, ids, bad)
    for _ in range(5):
        metrics = trainer.step(batch_for(trainer, good, bad, ids))
    after = logprob_of(trainer, ids, good), logprob_of(trainer, ids, bad)
    assert after[0] > before[0] and after[1] < before[1]
    assert trainer.version == trainer.steps == 5
    assert metrics["tokens"] > 0 and metrics["grad_norm"] > 0


def test_a_batch_without_signal_is_a_version_but_no_update() -> None:
    trainer = Trainer(TINY, OptimConfig())
    ids = prompt(trainer.policy)
    (tokens, logprobs) = generate(trainer.policy, [ids], seeds=[0])[0]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    flat = TrainBatch(rows=[Row.turn(ids, tokens, logprobs, 0.0, 0)], trajectories=1, groups=1)
    assert trainer.step(flat)["loss"] == 0.0
    assert trainer.version == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    trainer = Trainer(TINY, OptimConfig(lr=1e-2))
    ids = prompt(trainer.policy)
    (good, _), (bad, _) = generate(trainer.policy, [ids, ids], seeds=[1, 5])
    trainer.step(batch_for(trainer, good, bad, ids))
    path = tmp_path / "ck" / "latest.pt"
    trainer.save(path, {"elapsed_s": 12.5})
    other = Trainer(TINY, OptimConfig(lr=1e-2))
    assert other.load(path) == {"elapsed_s": 12.5}
    assert other.version == trainer.version == 1
    theirs = other.model.state_dict()
    for k, a in trainer.model.state_dict().items():
        assert torch.equal(a, theirs[k]), k
    # the optimiser state came back too: the next step is identical on both
    batch = batch_for(trainer, good, bad, ids)
    trainer.step(batch)
    other.step(batch)
    for a, b in zip(trainer.model.parameters(), other.model.parameters(), strict=True):
        assert torch.allclose(a, b)


def test_a_resumed_trainer_takes_its_own_optimiser_settings(tmp_path: Path) -> None:
    """Changing `optim` in the spec and resuming trains with the new settings: the moments come
    back from the checkpoint, the learning rate and a fixed entropy coefficient do not."""
    trainer = Trainer(TINY, OptimConfig(lr=1e-2, entropy_coef=0.05))
    ids = prompt(trainer.policy)
    (good, _), (bad, _) = generate(trainer.policy, [ids, ids], seeds=[1, 5])
    trainer.step(batch_for(trainer, good, bad, ids))
    trainer.save(tmp_path / "latest.pt")
    other = Trainer(TINY, OptimConfig(lr=1e-4, betas=(0.8, 0.9), entropy_coef=0.0))
    other.load(tmp_path / "latest.pt")
    group = other.optimizer.param_groups[0]
    assert (group["lr"], group["betas"]) == (1e-4, (0.8, 0.9))
    assert other.entropy_coef == 0.0
    moments = other.optimizer.state_dict()["state"]
    assert moments and all(float(s["step"]) == 1 for s in moments.values())


def test_a_checkpoint_of_another_policy_is_refused(tmp_path: Path) -> None:
    trainer = Trainer(TINY, OptimConfig())
    trainer.save(tmp_path / "latest.pt")
    wider = PolicyConfig(layers=1, hidden=32, heads=2, kv_heads=1, vocab=600)
    other = Trainer(wider, OptimConfig())
    with pytest.raises(ValueError, match="another policy config"):
        other.load(tmp_path / "latest.pt")


def test_the_entropy_bonus_spreads_a_peaked_policy() -> None:
    """With no reward signal at all, the entropy bonus alone moves the policy toward uniform
    over the allowed actions (and its gradient is finite despite the masked -inf logits)."""
    from actors.lm import sequence_scores

    trainer = Trainer(TINY, OptimConfig(lr=1e-2))
    ids = prompt(trainer.policy)
    (good, _), (bad, _) = generate(trainer.policy, [ids, ids], seeds=[1, 2])
    for _ in range(5):  # first make it peaked: reward one action
        trainer.step(batch_for(trainer, good, bad, ids))
    with torch.no_grad():
        peaked = float(sequence_scores(trainer.policy, [ids], [good])[1][0][0])
    spread = Trainer(TINY, OptimConfig(lr=1e-2, entropy_coef=1.0))
    spread.model.load_state_dict(trainer.model.state_dict())
    flat = TrainBatch(
        rows=[Row.turn(ids, good, [0.0] * len(good), 0.0, 0)], trajectories=1, groups=1
    )
    for _ in range(5):
        metrics = spread.step(flat)
    with torch.no_grad():
        after = float(sequence_scores(spread.policy, [ids], [good])[1][0][0])
    assert after > peaked
    assert metrics["entropy"] > 0 and all(
        p.grad is None or torch.isfinite(p.grad).all() for p in spread.model.parameters()
    )


@pytest.mark.parametrize("norm", ["token", "sequence"])
def test_rows_without_advantage_are_skipped_without_changing_the_gradient(norm: str) -> None:
    """The step skips the forward pass of zero-advantage rows but keeps the whole batch's
    denominator: its gradient equals the loss over every row, computed the slow way."""
    optim = OptimConfig(norm=norm)
    trainer = Trainer(TINY, optim)
    ids = prompt(trainer.policy)
    longer = [*ids[:-1], *trainer.policy.tokenizer.encode(" cough").ids, trainer.policy.act_id]
    outs = generate(trainer.policy, [ids, ids, longer, longer, ids], seeds=[1, 2, 3, 4, 5])
    rows = [
        Row.turn(p, t, lp, adv, 0)
        for p, (t, lp), adv in zip(
            [ids, ids, longer, longer, ids], outs, [1.0, 0.0, -0.5, 0.0, 0.0], strict=True
        )
    ]
    captured: list[dict[str, torch.Tensor]] = []
    trainer.grad_hook = lambda model: captured.append(
        {n: p.grad.clone() for n, p in model.named_parameters()}
    )
    metrics = trainer.step(TrainBatch(rows=rows, trajectories=5, groups=2))
    assert metrics["rows_trained"] == 2.0
    reference = Trainer(TINY, optim)
    reference.model.zero_grad()
    _, _, loss = reference._part_loss(rows, None)  # every row, zero advantages included
    loss.backward()
    for name, p in reference.model.named_parameters():
        assert torch.allclose(captured[0][name], p.grad, atol=1e-7), name


def test_a_data_parallel_rank_without_signal_still_takes_part() -> None:
    """With a gradient hook (data parallel), a rank whose rows carry no advantage still runs its
    backward-and-hook so the collective sees every rank; its own gradient is zero."""
    trainer = Trainer(TINY, OptimConfig())
    ids = prompt(trainer.policy)
    (tokens, logprobs) = generate(trainer.policy, [ids], seeds=[0])[0]
    seen: list[float] = []
    trainer.grad_hook = lambda model: seen.append(
        sum(float(p.grad.abs().sum()) for p in model.parameters())
    )
    flat = TrainBatch(rows=[Row.turn(ids, tokens, logprobs, 0.0, 0)], trajectories=1, groups=1)
    trainer.step(flat)
    assert seen == [0.0] and trainer.version == 1


def test_a_packed_episode_trains_exactly_as_its_turns() -> None:
    """One row holding a whole episode (a span per turn) gives the gradient of one row per turn."""
    from protocols.dialects import get_dialect
    from tests.test_lm import INTRO, steps

    trainer = Trainer(TINY, OptimConfig())
    policy = trainer.policy
    history = steps()
    native = get_dialect("native")
    actions = [policy.tokenizer.encode(native.render_action(s.action)).ids for s in history]
    prompts = [encode_prompt(policy, INTRO, history[:k]) for k in range(len(history) + 1)]
    last = generate(policy, [prompts[-1]], seeds=[1])[0][0]
    completions = [*actions, last]
    with torch.no_grad():
        behav = [lp.tolist() for lp in sequence_logprobs(policy, prompts, completions)]
    turns = [Row.turn(p, c, b, 0.7, 0) for p, c, b in zip(prompts, completions, behav, strict=True)]
    packed = Row(
        [*prompts[-1], *last],
        [(len(p), len(c)) for p, c in zip(prompts, completions, strict=True)],
        [x for b in behav for x in b],
        0.7,
        [0] * len(prompts),
    )
    grads = []
    for rows in (turns, [packed]):
        t = Trainer(TINY, OptimConfig())
        t.grad_hook = lambda m: grads.append([p.grad.clone() for p in m.parameters()])
        t.step(TrainBatch(rows=rows, trajectories=1, groups=1))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_entropy_bonus_on_every_row_is_the_full_batch_loss() -> None:
    """`entropy_sample = 1`: every row without advantage is scored for the entropy term, and the
    gradient is that of the loss over the whole batch; a smaller share scores fewer rows."""
    optim = OptimConfig(entropy_coef=0.1, entropy_sample=1.0)
    trainer = Trainer(TINY, optim)
    ids = prompt(trainer.policy)
    outs = generate(trainer.policy, [ids] * 8, seeds=list(range(8)))
    advs = [1.0, -1.0] + [0.0] * 6
    rows = [Row.turn(ids, t, lp, a, 0) for (t, lp), a in zip(outs, advs, strict=True)]
    grads: list[dict[str, torch.Tensor]] = []
    trainer.grad_hook = lambda m: grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    assert trainer.step(TrainBatch(rows=rows, trajectories=8, groups=1))["rows_trained"] == 8
    reference = Trainer(TINY, optim)
    reference.model.zero_grad()
    reference._part_loss(rows, None)[2].backward()
    for name, p in reference.model.named_parameters():
        assert torch.allclose(grads[0][name], p.grad, atol=1e-7), name
    sampled = Trainer(TINY, OptimConfig(entropy_coef=0.1, entropy_sample=0.25))
    counts = [sampled.step(TrainBatch(rows=rows, trajectories=8, groups=1))["rows_trained"]]
    counts += [sampled.step(TrainBatch(rows=rows, trajectories=8, groups=1))["rows_trained"]]
    assert all(2 <= c < 8 for c in counts)
    with pytest.raises(ValueError):
        OptimConfig(entropy_sample=0.0)


def test_the_adaptive_entropy_coefficient_tracks_its_target(tmp_path: Path) -> None:
    """With `entropy_target`, the coefficient climbs by its step while the trained tokens'
    entropy is below the target (never past the cap), falls back to 0 when the policy is less
    certain than the target, and a checkpoint keeps it."""
    step, cap = 0.01, 0.025
    trainer = Trainer(
        TINY,
        OptimConfig(entropy_target=100.0, entropy_coef_step=step, entropy_coef_max=cap),
    )
    ids = prompt(trainer.policy)
    (good, _), (bad, _) = generate(trainer.policy, [ids, ids], seeds=[1, 2])
    used = [trainer.step(batch_for(trainer, good, bad, ids))["entropy_coef"] for _ in range(4)]
    assert used == pytest.approx([0.0, 0.01, 0.02, 0.025])  # entropy (< 6 nats) is below 100
    trainer.save(tmp_path / "c.pt")
    again = Trainer(
        TINY, OptimConfig(entropy_target=100.0, entropy_coef_step=step, entropy_coef_max=cap)
    )
    again.load(tmp_path / "c.pt")
    assert again.entropy_coef == pytest.approx(cap)
    low = Trainer(
        TINY, OptimConfig(entropy_coef=0.015, entropy_target=0.01, entropy_coef_step=step)
    )
    used = [low.step(batch_for(low, good, bad, ids))["entropy_coef"] for _ in range(3)]
    assert used == pytest.approx([0.015, 0.005, 0.0])  # a uniform policy is above 0.01 nats
    fixed = Trainer(TINY, OptimConfig(entropy_coef=0.015))
    assert fixed.step(batch_for(fixed, good, bad, ids))["entropy_coef"] == 0.015
    assert fixed.entropy_coef == 0.015  # no target: the coefficient is constant
    with pytest.raises(ValueError, match="entropy_coef_max"):
        OptimConfig(entropy_coef=0.5, entropy_target=1.0)
