"""The policy's configuration: everything that determines the tokenizer and the initial weights."""

from __future__ import annotations

import msgspec


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tiny Qwen2 policy. Two processes with equal configs build identical version-0 policies.

    The defaults are sized for learning on 2 CPU cores (see the learnability notes in
    `actors.lm`): a 2-layer, 128-wide model, a small BPE vocabulary and one token per action.
    """

    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vocab: int = 2000  # BPE target size; the action tokens (when atomic) come on top of it
    max_prompt_tokens: int = 384  # prompts are left-truncated to this, keeping the intro
    seed: int = 0  # model init seed
    corpus_cases: int = 2000  # case bank the tokenizer is trained on
    corpus_seed: int = 0
    exams: int = 95  # N: the N most used key exams of the corpus cases are actions (95 = every
    #   key exam of the built-in bank); 0: every catalogue exam (211); fewer actions learn faster
    atomic_actions: bool = True  # every action string is one token (a softmax over actions);
    #   False: tag tokens + BPE pieces of the name (a token trie several levels deep)
    # Exams per order: 1, each exam its own action; N > 1 (needs `atomic_actions`), an order is a
    # list of 1 to N exam tokens and an end token, as the clinician orders a condition's key
    # exams at once (`actors.lm._grammar`). The episode rules' `max_exams_per_order` still holds.
    exams_per_order: int = 1
    rope_theta: float = 10000.0
    # The last turn of an episode (the intro's `max_turns`) ends its prompt with the `<|dx|>` cue
    # and only diagnoses may be sampled: every episode ends in a diagnosis, as the scripted
    # clinician's do, and the prompt tells the model (and the learner's grammar) which turn it is.
    final_diagnosis: bool = True

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PolicyConfig.{name} must be positive")
        if self.hidden % self.heads:
            raise ValueError(f"PolicyConfig.hidden ({self.hidden}) must divide by heads")
        if self.heads % self.kv_heads:
            raise ValueError(f"PolicyConfig.heads ({self.heads}) must divide by kv_heads")
        if (self.hidden // self.heads) % 2:
            raise ValueError("PolicyConfig: the head size (hidden / heads) must be even (RoPE)")
        if self.max_prompt_tokens < 16:
            raise ValueError("PolicyConfig.max_prompt_tokens must be at least 16")
        if self.exams < 0 or self.corpus_cases < 1:
            raise ValueError("PolicyConfig.exams must be >= 0 and corpus_cases >= 1")
        if self.exams_per_order < 1 or (self.exams_per_order > 1 and not self.atomic_actions):
            raise ValueError(
                "PolicyConfig.exams_per_order must be >= 1, and 1 unless atomic_actions is on "
                "(a list of exams is a list of exam tokens)"
            )
