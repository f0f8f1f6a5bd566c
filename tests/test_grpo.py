"""The GRPO loss against numbers worked out by hand (in the comments), gradient signs, masking and
edge cases. Log-probabilities are written as `log(x)` so the ratios are round numbers."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from trainers.grpo import group_advantages, grpo_loss, k3_kl, token_logprobs  # noqa: E402

L = math.log


def t(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def near(x: torch.Tensor, expected: list[list[float]], tol: float = 1e-6) -> None:
    want = torch.tensor(expected, dtype=torch.float64)
    assert torch.allclose(x.detach().double(), want, atol=tol, rtol=0), (x, want)


def ones(b: int, n: int) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool)


# --- advantages -------------------------------------------------------------------------------


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 0.0, 1.0, 2.0])
    groups = torch.tensor([7, 7, 7, 7, 3, 3, 9, 5, 5, 5])
    adv = group_advantages(rewards, groups, eps=0.0)
    # group 7: mean 0.5, population std 0.5 -> +-1
    # group 3: all equal -> 0;  group 9: one sample -> 0
    # group 5: mean 1, std sqrt(2/3) = 0.816497 -> -1/0.816497 = -1.224745, 0, +1.224745
    expected = [1, -1, -1, 1, 0, 0, 0, -1.224745, 0, 1.224745]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_group_advantages_eps_and_unscaled() -> None:
    rewards = torch.tensor([1.0, 0.0])
    groups = torch.tensor([0, 0])
    # std 0.5, eps 0.5 -> 0.5 / 1.0
    assert group_advantages(rewards, groups, eps=0.5).tolist() == pytest.approx([0.5, -0.5])
    assert group_advantages(rewards, groups, scale=False).tolist() == pytest.approx([0.5, -0.5])
    # equal rewards that are not exactly representable still give exactly 0, not 0/eps noise
    flat = group_advantages(torch.tensor([0.1, 0.1, 0.1]), torch.tensor([1, 1, 1]), eps=1e-12)
    assert flat.tolist() == [0.0, 0.0, 0.0]
    assert group_advantages(torch.tensor([]), torch.tensor([], dtype=torch.long)).numel() == 0
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(3), torch.zeros(2))


def test_a_std_floor_keeps_small_reward_differences_small() -> None:
    """A group that differs only by a 0.1 partial credit is not blown up to the size of a group
    with a full success once the std is floored; groups with a larger spread are unchanged."""
    rewards = torch.tensor([0.1, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    plain = group_advantages(rewards, groups, eps=0.0)
    floored = group_advantages(rewards, groups, eps=0.0, std_floor=0.2)
    # both groups: one sample above three, std = sqrt(3)/4 of the gap, so plain GRPO gives both
    # the same +-1.732 / 0.577
    assert plain[:4].tolist() == pytest.approx(plain[4:].tolist(), abs=1e-6)
    assert floored[4:].tolist() == pytest.approx(plain[4:].tolist(), abs=1e-6)  # std 0.43 > 0.2
    assert floored[:4].tolist() == pytest.approx([0.075 / 0.2] + [-0.025 / 0.2] * 3, abs=1e-6)


# --- the clipped objective --------------------------------------------------------------------


def test_clipping_positive_advantage_by_hand() -> None:
    logp = t([[L(1.5), L(0.5)]], grad=True)
    prox = t([[0.0, 0.0]])
    out = grpo_loss(logp, prox, torch.tensor([1.0]), ones(1, 2), eps_low=0.2, eps_high=0.2)
    # token 0: r = 1.5 -> clip 1.2, min(1.5, 1.2) = 1.2 (clipped: no gradient)
    # token 1: r = 0.5 -> clip 0.8, min(0.5, 0.8) = 0.5 (d/dlogp of r*A = r = 0.5)
    # loss = -(1.2 + 0.5) / 2 = -0.85; grad = [0, -0.5 / 2]
    assert out.loss.item() == pytest.approx(-0.85)
    out.loss.backward()
    near(logp.grad, [[0.0, -0.25]])
    assert out.clip_fraction == 0.5 and out.ratio_mean == pytest.approx(1.0) and out.tokens == 2


def test_clipping_negative_advantage_by_hand() -> None:
    logp = t([[L(1.5), L(0.5)]], grad=True)
    out = grpo_loss(logp, t([[0.0, 0.0]]), torch.tensor([-1.0]), ones(1, 2))
    # token 0: min(-1.5, -1.2) = -1.5 (unclipped, grad of -(-r) = r = 1.5)
    # token 1: min(-0.5, -0.8) = -0.8 (clipped)
    # loss = (1.5 + 0.8) / 2 = 1.15; grad = [1.5 / 2, 0]
    assert out.loss.item() == pytest.approx(1.15)
    out.loss.backward()
    near(logp.grad, [[0.75, 0.0]])


def test_asymmetric_clip_range() -> None:
    logp = t([[L(1.25), L(0.75)]], grad=True)
    adv = t([[1.0, -1.0]])
    out = grpo_loss(logp, t([[0.0, 0.0]]), adv, ones(1, 2), eps_low=0.2, eps_high=0.28)
    # token 0: r = 1.25 < 1.28, not clipped -> 1.25
    # token 1: r = 0.75 < 0.8 with A = -1: min(-0.75, -0.8) = -0.8, clipped at 1 - eps_low
    # loss = -(1.25 - 0.8) / 2 = -0.225
    assert out.loss.item() == pytest.approx(-0.225)
    assert out.clip_fraction == 0.5
    out2 = grpo_loss(logp, t([[0.0, 0.0]]), adv, ones(1, 2), eps_low=0.2, eps_high=0.2)
    # symmetric: token 0 is clipped at 1.2 -> -(1.2 - 0.8) / 2 = -0.2
    assert out2.loss.item() == pytest.approx(-0.2)


def test_token_versus_sequence_normalisation() -> None:
    logp = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    # r = 1 everywhere, so each token's objective is its advantage
    # token: -(1 + 1 + 1 - 1) / 4 = -0.5;  sequence: -((3 / 3) + (-1 / 1)) / 2 = 0
    token = grpo_loss(logp, logp.detach(), adv, mask, norm="token")
    seq = grpo_loss(logp, logp.detach(), adv, mask, norm="sequence")
    assert token.loss.item() == pytest.approx(-0.5)
    assert seq.loss.item() == pytest.approx(0.0)
    token.loss.backward()
    # d/dlogp of -r*A / 4 at r = 1: -A / 4
    near(logp.grad, [[-0.25, -0.25, -0.25], [0.25, 0.0, 0.0]])
    logp.grad = None
    seq.loss.backward()
    # sequence 0: -1 / 3 / 2 per token; sequence 1: +1 / 1 / 2
    near(logp.grad, [[-1 / 6, -1 / 6, -1 / 6], [0.5, 0.0, 0.0]])
    with pytest.raises(ValueError):
        grpo_loss(logp, logp.detach(), adv, mask, norm="batch")  # type: ignore[arg-type]


# --- the decoupled behaviour correction -------------------------------------------------------


def test_decoupled_weight_by_hand() -> None:
    logp = t([[0.0, 0.0]], grad=True)
    prox = t([[0.0, 0.0]])
    behav = t([[L(0.5), L(2.0)]])  # w = pi_prox / pi_behav = 1 / 0.5 = 2 and 1 / 2 = 0.5
    adv = torch.tensor([1.0])
    plain = grpo_loss(logp, prox, adv, ones(1, 2), behav_logp=behav)
    # r = 1: loss = -(2 * 1 + 0.5 * 1) / 2 = -1.25
    assert plain.loss.item() == pytest.approx(-1.25)
    assert plain.behav_weight_mean == pytest.approx(1.25) and plain.behav_capped_fraction == 0
    plain.loss.backward()
    near(logp.grad, [[-1.0, -0.25]])  # -w * r * A / 2
    masked = grpo_loss(logp, prox, adv, ones(1, 2), behav_logp=behav, behav_cap=1.5)
    # AReaL: the token with w = 2 > 1.5 is dropped but still counted: -(0 + 0.5) / 2 = -0.25
    assert masked.loss.item() == pytest.approx(-0.25) and masked.behav_capped_fraction == 0.5
    trunc = grpo_loss(
        logp, prox, adv, ones(1, 2), behav_logp=behav, behav_cap=1.5, behav_cap_mode="truncate"
    )
    # truncated: -(1.5 + 0.5) / 2 = -1.0
    assert trunc.loss.item() == pytest.approx(-1.0)


def test_clipping_is_around_the_proximal_not_the_behaviour_policy() -> None:
    # the behaviour policy is far away (w = 4) but theta equals prox: r = 1 is not clipped
    logp = t([[L(0.8)]], grad=True)
    out = grpo_loss(logp, t([[L(0.8)]]), torch.tensor([1.0]), ones(1, 1), behav_logp=t([[L(0.2)]]))
    # loss = -4 * 1 * 1 = -4, grad = -4
    assert out.loss.item() == pytest.approx(-4.0) and out.clip_fraction == 0
    out.loss.backward()
    assert logp.grad.item() == pytest.approx(-4.0)
    # with behaviour == proximal the correction is exactly the plain loss
    a = grpo_loss(logp, t([[0.0]]), torch.tensor([1.0]), ones(1, 1), behav_logp=t([[0.0]]))
    b = grpo_loss(logp, t([[0.0]]), torch.tensor([1.0]), ones(1, 1))
    assert a.loss.item() == pytest.approx(b.loss.item()) == pytest.approx(-0.8)  # r = 0.8 / 1


# --- KL to a reference ------------------------------------------------------------------------


def test_k3_kl_by_hand() -> None:
    # d = ref - logp = log 2: k3 = 2 - log 2 - 1 = 0.306853; d = 0: 0
    near(k3_kl(t([[0.0, 0.0]]), t([[L(2.0), 0.0]])), [[0.306853, 0.0]])
    logp = t([[0.0, 0.0]], grad=True)
    out = grpo_loss(
        logp, logp.detach(), torch.tensor([0.0]), ones(1, 2), ref_logp=t([[L(2.0), 0.0]]),
        kl_coef=0.1,
    )  # fmt: skip
    # A = 0: loss = 0.1 * (0.306853 + 0) / 2 = 0.0153426
    assert out.loss.item() == pytest.approx(0.0153426, abs=1e-7)
    assert out.kl == pytest.approx(0.1534264, abs=1e-7)
    out.loss.backward()
    # d k3 / d logp = 1 - exp(d) = 1 - 2 = -1 -> 0.1 * -1 / 2 = -0.05: descent raises logp toward
    # the reference, which gives the token more probability
    near(logp.grad, [[-0.05, 0.0]])
    # without kl_coef the KL is only reported
    no = grpo_loss(logp, logp.detach(), torch.tensor([0.0]), ones(1, 2), ref_logp=t([[L(2), 0]]))
    assert no.loss.item() == 0.0 and no.kl == pytest.approx(0.1534264, abs=1e-7)


# --- masks, edge cases, gradient signs --------------------------------------------------------


def test_masked_positions_are_inert_even_when_garbage() -> None:
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    good = t([[L(0.5), 0.0, L(1.5)]], grad=True)
    bad = t([[L(0.5), float("inf"), L(1.5)]], grad=True)
    prox = t([[0.0, float("nan"), 0.0]])
    behav = t([[0.0, -1e9, 0.0]])
    ref = t([[0.0, float("-inf"), 0.0]])
    adv = t([[1.0, float("nan"), 1.0]])
    kw = {"behav_logp": behav, "ref_logp": ref, "kl_coef": 0.1}
    a = grpo_loss(good, prox, adv, mask, **kw)
    b = grpo_loss(bad, prox, adv, mask, **kw)
    assert a.loss.item() == pytest.approx(b.loss.item())
    assert math.isfinite(a.loss.item()) and a.tokens == 2
    b.loss.backward()
    assert torch.isfinite(bad.grad).all() and bad.grad[0, 1] == 0
    # r = 0.5 -> 0.5 (unclipped), r = 1.5 -> 1.2: policy part -(0.5 + 1.2) / 2 = -0.85
    assert a.policy_loss == pytest.approx(-0.85)


def test_all_masked_is_zero_not_nan() -> None:
    logp = t([[0.3, 0.1]], grad=True)
    out = grpo_loss(logp, t([[0.0, 0.0]]), torch.tensor([1.0]), torch.zeros(1, 2, dtype=torch.bool))
    assert out.loss.item() == 0.0 and out.tokens == 0 and out.clip_fraction == 0.0
    out.loss.backward()
    assert logp.grad.tolist() == [[0.0, 0.0]]
    seq = grpo_loss(
        logp, t([[0.0, 0.0]]), torch.tensor([1.0]), torch.zeros(1, 2, dtype=torch.bool),
        norm="sequence",
    )  # fmt: skip
    assert seq.loss.item() == 0.0


def test_bad_arguments() -> None:
    x = t([[0.0]])
    with pytest.raises(ValueError):
        grpo_loss(x, t([[0.0, 0.0]]), torch.tensor([1.0]), ones(1, 1))
    with pytest.raises(ValueError):
        grpo_loss(x, x, torch.tensor([1.0]), ones(1, 1), behav_cap_mode="clip")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        grpo_loss(x, x, torch.tensor([1.0]), ones(1, 1), eps_low=-0.1)


def test_token_logprobs_by_hand() -> None:
    # logits [0, log 3] -> probabilities 1/4, 3/4
    logits = torch.tensor([[[0.0, L(3.0)], [L(3.0), 0.0]]])
    out = token_logprobs(logits, torch.tensor([[1, 1]]))
    near(out, [[L(0.75), L(0.25)]])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_step_moves_probability_with_the_advantage(sign: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 4))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    before = token_logprobs(logits, tokens).detach()
    opt = torch.optim.SGD([logits], lr=0.1)
    out = grpo_loss(token_logprobs(logits, tokens), before, torch.tensor([sign, sign]), mask)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    after = token_logprobs(logits, tokens).detach()
    moved = (after - before)[mask]
    assert (torch.sign(moved) == sign).all()  # sampled tokens gain (A > 0) or lose (A < 0)
    assert torch.equal(after[~mask], before[~mask])  # masked positions untouched
