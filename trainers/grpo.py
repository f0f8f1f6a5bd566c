"""GRPO loss pieces on masked token tensors (torch).

Shapes: `B` sequences (one per trajectory turn, or a whole trajectory) of `T` token positions;
`mask[b, t]` is true for tokens the agent generated (the ones the loss trains on). Three policies
give log-probabilities of the same tokens:

- `logp`: the policy being optimised (carries the gradient);
- `prox_logp`: the *proximal* policy, the learner's weights at the start of this training step
  (recomputed by the learner; its ratio is the one PPO clips);
- `behav_logp`: the *behaviour* policy, the (possibly stale) version that generated the turn, as
  recorded by the agent. Omitted: the turn is on-policy (behaviour = proximal).

Decoupled PPO (AReaL; Hilton et al., "Batch size-invariance for policy optimization"): per token

    objective = w * min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)
    r = pi_theta / pi_prox,   w = pi_prox / pi_behav (no gradient)

so the trust region is around the proximal policy however stale the behaviour was, and `w` corrects
for sampling from the behaviour policy. `w` is capped (`behav_cap`): "mask" drops tokens with
`w > cap` from the objective (AReaL's choice; they still count in the denominator), "truncate" uses
`min(w, cap)` (truncated importance sampling). Optional k3 KL to a reference policy (Schulman's
estimator, as in GRPO): `k3 = exp(ref - logp) - (ref - logp) - 1 >= 0`, added as `kl_coef * k3`.

The loss is `-objective + kl_coef * k3`, averaged over tokens:

- `norm="token"` (default, DAPO): sum over every unmasked token of the batch / their number, so
  long and short sequences weigh per token;
- `norm="sequence"` (original GRPO): mean over each sequence's unmasked tokens, then mean over the
  sequences that have any.

Masked positions are replaced by zeros before any arithmetic, so whatever they hold (padding,
inf, NaN) affects neither the loss nor the gradient. An all-masked batch gives a loss of 0 (with a
zero gradient, still connected to `logp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["LossOut", "group_advantages", "grpo_loss", "k3_kl", "token_logprobs"]


def group_advantages(
    rewards: Tensor,
    groups: Tensor,
    *,
    eps: float = 1e-6,
    scale: bool = True,
    std_floor: float = 0.0,
) -> Tensor:
    """GRPO advantages: `(r - group mean) / (group std + eps)` for each sample.

    `rewards` and `groups` are 1-D of the same length; `groups` holds any integer ids (samples of
    one case share one). The std is the population std (divide by n), which is defined for every
    group size. Groups of size 1 and groups whose rewards are all equal (std 0) get advantage
    exactly 0: they carry no relative signal, so they neither push nor pull (they would otherwise
    give `0 / eps` noise). `scale=False` skips the division by the std (Dr. GRPO).

    `std_floor` divides by `max(std, std_floor)`: a group whose rewards differ only by a small
    partial credit (a right organ system, 0.1) then gets small advantages instead of being blown
    up to the size of a group with a right diagnosis (1.0), which made the policy collapse onto
    one diagnosis per organ system.
    """
    if rewards.dim() != 1 or groups.shape != rewards.shape:
        raise ValueError("rewards and groups must be 1-D tensors of the same length")
    r = rewards.to(torch.float64)
    _, index = torch.unique(groups, return_inverse=True)
    n_groups = int(index.max()) + 1 if index.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, index, torch.ones_like(r))
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, index, r) / count
    centred = r - mean[index]
    var = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, index, centred**2) / count
    std = var.sqrt()[index]
    flat = std <= 1e-12 * (1.0 + mean[index].abs())  # size 1 or all equal (up to rounding)
    adv = centred / (std.clamp(min=std_floor) + eps) if scale else centred
    adv = torch.where(flat, torch.zeros_like(adv), adv)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probabilities `[B, T]` of `tokens [B, T]` under `logits [B, T, V]` (already aligned:
    `logits[:, t]` predicts `tokens[:, t]`)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) on tokens sampled from pi_theta."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass
class LossOut:
    loss: Tensor  # scalar, to backpropagate
    policy_loss: float  # the clipped-objective part (same normalisation)
    kl: float  # mean k3 over unmasked tokens (0 without a reference)
    clip_fraction: float  # share of unmasked tokens whose ratio term was clipped (zero gradient)
    ratio_mean: float  # mean pi_theta / pi_prox
    behav_weight_mean: float  # mean pi_prox / pi_behav before the cap
    behav_capped_fraction: float  # share of unmasked tokens over the cap
    tokens: int  # unmasked tokens


def _reduce(x: Tensor, mask: Tensor, norm: str) -> Tensor:
    if norm == "token":
        return x.sum() / mask.sum().clamp(min=1)
    if norm == "sequence":
        per_token = mask.sum(dim=-1)
        seq = x.sum(dim=-1) / per_token.clamp(min=1)
        return seq.sum() / (per_token > 0).sum().clamp(min=1)
    raise ValueError(f"norm must be 'token' or 'sequence', got {norm!r}")


def grpo_loss(
    logp: Tensor,
    prox_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    behav_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    kl_coef: float = 0.0,
    behav_cap: float | None = None,
    behav_cap_mode: Literal["mask", "truncate"] = "mask",
    norm: Literal["token", "sequence"] = "token",
) -> LossOut:
    """The decoupled, clipped GRPO loss; see the module docstring for the formula.

    `logp`, `prox_logp`, `behav_logp`, `ref_logp`, `mask`: `[B, T]`; `advantages`: `[B]` (one per
    sequence, broadcast over its tokens) or `[B, T]`. Only `logp` gets a gradient.
    """
    if logp.dim() != 2 or prox_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError("logp, prox_logp and mask must all be [B, T]")
    if behav_cap_mode not in ("mask", "truncate"):
        raise ValueError(f"behav_cap_mode must be 'mask' or 'truncate', got {behav_cap_mode!r}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError("clip ranges must be >= 0")
    m = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)

    def clean(x: Tensor) -> Tensor:
        return torch.where(m, x, zero)

    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    adv = clean(advantages.detach().to(logp.dtype))
    lp = clean(logp)
    prox = clean(prox_logp.detach().to(logp.dtype))

    ratio = torch.exp(lp - prox)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    unclipped_term = ratio * adv
    clipped_term = clipped * adv
    objective = torch.minimum(unclipped_term, clipped_term)
    was_clipped = (clipped_term.detach() < unclipped_term.detach()) & m

    if behav_logp is not None:
        weight = torch.exp(prox - clean(behav_logp.detach().to(logp.dtype)))
        over = (weight > behav_cap) & m if behav_cap is not None else torch.zeros_like(m)
        if behav_cap is not None and behav_cap_mode == "mask":
            used = torch.where(over, zero, weight)
        elif behav_cap is not None:
            used = weight.clamp(max=behav_cap)
        else:
            used = weight
        objective = objective * used
    else:
        weight = torch.ones_like(ratio)
        over = torch.zeros_like(m)

    per_token = clean(-objective)
    policy_loss = _reduce(per_token, m, norm)
    loss = policy_loss
    kl_mean = 0.0
    if ref_logp is not None:
        kl = clean(k3_kl(lp, clean(ref_logp.detach().to(logp.dtype))))
        if kl_coef:
            loss = loss + kl_coef * _reduce(kl, m, norm)
        kl_mean = float(_reduce(kl.detach(), m, "token"))
    n = int(m.sum())
    denom = max(n, 1)
    return LossOut(
        loss=loss,
        policy_loss=float(policy_loss.detach()),
        kl=kl_mean,
        clip_fraction=float(was_clipped.sum()) / denom,
        ratio_mean=float(clean(ratio.detach()).sum()) / denom,
        behav_weight_mean=float(clean(weight).sum()) / denom,
        behav_capped_fraction=float(over.sum()) / denom,
        tokens=n,
    )
