"""One GRPO optimisation step on a `TrainBatch`, and the checkpoint that lets a run resume.

The policy is `actors.lm`'s tiny causal LM. Log-probabilities are recomputed under the grammar's
mask, i.e. over exactly the constrained distribution the agent sampled from, so the importance
ratios compare like with like. With one minibatch per batch (the default) the proximal policy is
the current weights and `prox_logp = logp.detach()` (ratio 1, no second forward pass); with
several minibatches the proximal log-probabilities are computed once, without gradient, before the
first update. The behaviour policy's recorded log-probabilities give the decoupled correction for
stale turns (`trainers.grpo.grpo_loss`).
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from actors.lm import Policy, PolicyConfig, build_policy, span_scores
from trainers.batch import Row, TrainBatch

__all__ = ["OptimConfig", "Trainer"]


class OptimConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lr: float = 5e-4  # 2e-3 collapses the tiny policy onto one diagnosis (offline check)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.28  # DAPO's clip-higher
    behav_cap: float = 5.0  # decoupled correction: drop tokens whose prox/behav weight exceeds it
    # k3 KL to the initial policy (near uniform over the actions); 0 skips the reference model.
    kl_coef: float = 0.0
    # Exact entropy of the constrained action distribution at every trained token, as a bonus:
    # keeps the policy from collapsing onto the few diagnoses that a rare success pushes up for
    # every patient (Adam turns a one-success batch into a full-size step).
    entropy_coef: float = 0.0
    # Adaptive entropy control (Skywork-OR1): with a target > 0 the coefficient starts at
    # `entropy_coef` and after every step moves by `entropy_coef_step`, up while the mean entropy
    # of the trained tokens is below the target and down (not below 0) while it is above, capped
    # at `entropy_coef_max`. A fixed coefficient either lets the policy collapse or holds it back
    # for good; this one only pushes while the policy is more certain than the target.
    entropy_target: float = 0.0
    entropy_coef_step: float = 0.002
    entropy_coef_max: float = 0.1
    # Rows without advantage matter only to the entropy term: it is estimated on this share of
    # them (each weighted 1 / share, so the estimate is unbiased) plus every row with advantage.
    entropy_sample: float = 0.25
    minibatches: int = 1
    norm: str = "token"  # or "sequence"

    def __post_init__(self) -> None:
        if not 0.0 < self.entropy_sample <= 1.0:
            raise ValueError("OptimConfig.entropy_sample must be in (0, 1]")
        if min(self.entropy_coef, self.entropy_target, self.entropy_coef_step) < 0:
            raise ValueError("OptimConfig: entropy_coef, entropy_target and its step must be >= 0")
        if self.entropy_target and self.entropy_coef > self.entropy_coef_max:
            raise ValueError("OptimConfig.entropy_coef must not exceed entropy_coef_max")
        if self.minibatches < 1 or self.norm not in ("token", "sequence"):
            raise ValueError("OptimConfig: minibatches >= 1, norm 'token' or 'sequence'")


class Trainer:
    """Owns the policy, its optimiser and the version counter (one version per step)."""

    def __init__(
        self,
        policy_config: PolicyConfig,
        optim: OptimConfig,
        *,
        threads: int = 1,
        temperature: float = 1.0,
        grad_hook: Callable[[Any], None] | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.optim_config = optim
        self.temperature = temperature  # the agent's sampling temperature: same distribution
        self.policy: Policy = build_policy(policy_config)
        self.model = self.policy.model
        self.model.train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=optim.lr,
            betas=optim.betas,
            weight_decay=optim.weight_decay,
        )
        self.reference: Any = None
        if optim.kl_coef:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        # Called with the model after every backward pass, before clipping: a data-parallel
        # learner averages the gradients across its ranks here.
        self.grad_hook = grad_hook
        self.version = 0
        self.steps = 0
        self.entropy_coef = optim.entropy_coef  # adapted after each step with `entropy_target`

    # --- one step --------------------------------------------------------------------------

    def _logprobs(self, rows: list[Row], model: Any = None) -> tuple[Any, Any, Any]:
        """`[B, T]` log-probabilities of each row's completion and the entropies of the
        distributions they were drawn from (both zero-padded), and the mask."""
        import torch

        policy = self.policy if model is None else _with_model(self.policy, model)
        per_row, entropies = span_scores(
            policy, [r.ids for r in rows], [r.spans for r in rows], temperature=self.temperature
        )
        width = max(len(x) for x in per_row)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, x in enumerate(per_row):
            mask[i, : len(x)] = True

        def pad(xs: list[Any]) -> Any:
            return torch.stack([torch.cat([x, torch.zeros(width - len(x))]) for x in xs])

        return pad(per_row), pad(entropies), mask

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimiser step over the batch (in `minibatches` updates); returns its metrics.

        A row with advantage 0 adds nothing to the clipped surrogate, so without a KL term its
        forward pass is skipped (with an entropy bonus, all but a random `entropy_sample` share of
        them, weighted up); the loss keeps the whole batch's token count (or row count,
        `norm="sequence"`) as its denominator, so the gradient is the full batch's (its expectation,
        with the sampled entropy). Early in training most groups have no success, and this is most
        of the learner's time saved.
        """
        import torch

        cfg = self.optim_config
        t0 = time.perf_counter()
        rows = batch.rows
        metrics: dict[str, float] = {"rows": float(len(rows))}
        skipping = self.reference is None  # with a KL term every row counts
        kept, weights = list(rows), [1.0] * len(rows)
        if skipping:
            share = cfg.entropy_sample if self.entropy_coef else 0.0
            rng = random.Random(self.steps)  # the same draw when a step is replayed
            extra = [r for r in rows if r.advantage == 0.0 and share and rng.random() < share]
            kept = [r for r in rows if r.advantage != 0.0]
            weights = [1.0] * len(kept) + [1.0 / share if share else 0.0] * len(extra)
            kept += extra
        metrics["rows_trained"] = float(len(kept))
        if not kept and self.grad_hook is None:
            # No relative signal in the whole batch (and no KL to pull toward the reference): the
            # step is a no-op but still a version, so admission (which counts versions) keeps
            # the rollouts flowing. (A data-parallel rank always steps: its peers may have
            # signal, and the gradient average needs every rank.)
            self.version += 1
            self.steps += 1
            metrics.update(loss=0.0, grad_norm=0.0, clip_fraction=0.0, kl=0.0, tokens=0.0)
            metrics["step_s"] = time.perf_counter() - t0
            return metrics
        n_parts = cfg.minibatches
        parts = [kept[i::n_parts] for i in range(n_parts)]
        part_weights = [weights[i::n_parts] for i in range(n_parts)]
        if self.grad_hook is None:
            part_weights = [w for p, w in zip(parts, part_weights, strict=True) if p]
            parts = [p for p in parts if p]
        # the denominator each part would have had with every row in it
        unit = "token" if cfg.norm == "token" else "row"
        full = sum(r.tokens for r in rows) if unit == "token" else len(rows)
        per_part = max(full / n_parts, 1e-9)
        prox: list[Any] = []
        if len(parts) > 1:
            with torch.no_grad():
                prox = [self._logprobs(p)[0] if p else None for p in parts]
        totals = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "grad_norm": 0.0, "tokens": 0.0}
        totals["behav_weight"] = totals["behav_capped"] = totals["entropy"] = 0.0
        params = list(self.model.parameters())
        for k, part in enumerate(parts):
            self.optimizer.zero_grad(set_to_none=True)
            if part:
                out, mean_entropy, loss = self._part_loss(
                    part, prox[k] if prox else None, part_weights[k]
                )
                size = sum(r.tokens for r in part) if unit == "token" else len(part)
                loss = loss * (size / per_part) if skipping else loss
                loss.backward()
                totals["loss"] += float(loss.detach()) / len(parts)
                totals["entropy"] += float(mean_entropy.detach()) / len(parts)
                totals["clip_fraction"] += out.clip_fraction / len(parts)
                totals["kl"] += out.kl / len(parts)
                totals["tokens"] += out.tokens
                totals["behav_weight"] += out.behav_weight_mean / len(parts)
                totals["behav_capped"] += out.behav_capped_fraction / len(parts)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if self.grad_hook is not None:
                self.grad_hook(self.model)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.optimizer.step()
            totals["grad_norm"] += float(norm) / len(parts)
        self.version += 1
        self.steps += 1
        metrics.update(totals)
        metrics["entropy_coef"] = self.entropy_coef
        self._adapt_entropy_coef(totals["entropy"])
        metrics["step_s"] = time.perf_counter() - t0
        return metrics

    def _adapt_entropy_coef(self, entropy: float) -> None:
        cfg = self.optim_config
        if cfg.entropy_target <= 0:
            return
        step = cfg.entropy_coef_step if entropy < cfg.entropy_target else -cfg.entropy_coef_step
        self.entropy_coef = min(max(self.entropy_coef + step, 0.0), cfg.entropy_coef_max)

    def _part_loss(
        self, part: list[Row], prox: Any, weights: list[float] | None = None
    ) -> tuple[Any, Any, Any]:
        """The GRPO loss of one minibatch (its own normalisation), with the entropy bonus (each
        row's entropy weighted by `weights`, for rows sampled among the ones without advantage);
        also returns the plain mean entropy of its tokens."""
        import torch

        from trainers.grpo import grpo_loss

        cfg = self.optim_config
        logp, entropy, mask = self._logprobs(part)
        behav = _pad([r.behav_logprobs for r in part], logp.shape[1])
        adv = torch.tensor([r.advantage for r in part], dtype=torch.float32)
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = self._logprobs(part, self.reference)[0]
        out = grpo_loss(
            logp,
            logp.detach() if prox is None else prox,
            adv,
            mask,
            behav_logp=behav,
            ref_logp=ref,
            eps_low=cfg.eps_low,
            eps_high=cfg.eps_high,
            kl_coef=cfg.kl_coef,
            behav_cap=cfg.behav_cap,
            norm=cfg.norm,  # type: ignore[arg-type]
        )
        tokens = mask.sum().clamp(min=1)
        mean_entropy = (entropy * mask).sum() / tokens
        if not self.entropy_coef:
            return out, mean_entropy, out.loss
        w = torch.tensor(weights or [1.0] * len(part), dtype=entropy.dtype)[:, None]
        bonus = (entropy * mask * w).sum() / tokens
        return out, mean_entropy, out.loss - self.entropy_coef * bonus

    # --- weights and checkpoints ----------------------------------------------------------

    def weight_tensors(self) -> list[tuple[str, str, list[int], bytes]]:
        from actors.lm import state_tensors

        return state_tensors(self.model)

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Model, optimiser, counters and RNG state, written atomically (temp file + rename)."""
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "steps": self.steps,
            "entropy_coef": self.entropy_coef,
            "policy": msgspec.to_builtins(self.policy.config),
            "rng": torch.get_rng_state(),
            "extra": extra or {},
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> dict[str, Any]:
        """Restore a checkpoint written by `save`; a different policy config is an error.

        The optimiser's moments come back, its settings do not: the learning rate, betas and
        weight decay are this trainer's (the spec's), and so is a fixed entropy coefficient,
        so a run resumed with a changed `optim` trains as its spec says. Only an adaptive
        coefficient (`entropy_target`) continues from where it was."""
        import torch

        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = state.get("policy")
        if saved != msgspec.to_builtins(self.policy.config):
            raise ValueError(f"checkpoint {path} was made with another policy config: {saved}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        cfg = self.optim_config
        for group in self.optimizer.param_groups:
            group.update(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.version = int(state["version"])
        self.steps = int(state["steps"])
        if cfg.entropy_target:
            self.entropy_coef = float(state.get("entropy_coef", cfg.entropy_coef))
        torch.set_rng_state(state["rng"])
        return dict(state.get("extra") or {})


def _pad(values: list[list[float]], width: int) -> Any:
    import torch

    out = torch.zeros(len(values), width)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.tensor(v, dtype=torch.float32)
    return out


def _with_model(policy: Policy, model: Any) -> Policy:
    """The same policy (tokenizer, grammar) with other weights, e.g. the KL reference."""
    other = copy.copy(policy)
    other.model = model
    return other
