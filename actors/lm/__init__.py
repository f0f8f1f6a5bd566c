"""The `hf` agent's policy: a tiny Qwen2 LM trained from scratch on CPU, and its action grammar.

    policy = build_policy(PolicyConfig())                # deterministic: same config, same policy
    ids = encode_prompt(policy, intro, steps)            # compact prompt, left-truncated
    [(tokens, logprobs)] = generate(policy, [ids], seeds=[7])
    text = policy.grammar.action_of(tokens)              # "<exam>sodium</exam>"
    lp = sequence_logprobs(policy, [ids], [tokens])      # the learner: same numbers, with grad

Design for learning fast on two cores (see `PolicyConfig`): prompts are one line per step with
reference ranges dropped (an intro is ~10 tokens, a step ~15); the action space is a fixed list of
native-dialect strings (the bank's 81 diagnoses, its 95 key exams, 108 questions) decoded under a
token trie, so every output is a valid action; with `atomic_actions` (default) each action is one
token, so one forward pass produces an action and the head is a softmax over actions; with
`exams_per_order > 1` an exam order is a list of exam tokens ended by `<|end|>`. Weights travel as
raw tensors (`state_tensors` / `load_tensors`) via `engine.weights`.

Learnability, measured offline (REINFORCE with group-normalised advantages, groups of 8, 8 cases
per step, AdamW, diagnosis-only grammar, intro-only prompts, 1 thread): accuracy 1% -> 3.4% at
step 500 (80 s) -> 11% at 800 (120 s) -> 14.6% at 240 s with lr 5e-4; lr 1e-3 peaks near 5% and
collapses onto ~18 diagnoses, lr 2e-3 collapses at once. The policy is a fresh softmax: keep the
learner's lr at or below ~5e-4 (or add an entropy / KL term) for this model.
"""

from actors.lm._config import PolicyConfig
from actors.lm._grammar import KINDS, ActionGrammar, action_strings, kind_of
from actors.lm._policy import (
    Policy,
    build_policy,
    encode_prompt,
    generate,
    request_prompt,
    sequence_logprobs,
    sequence_scores,
    span_scores,
)
from actors.lm._prompt import compact_result, render_prompt
from actors.lm._tokenizer import build_tokenizer
from actors.lm._weights import load_tensors, state_tensors

__all__ = [
    "KINDS",
    "ActionGrammar",
    "Policy",
    "PolicyConfig",
    "action_strings",
    "build_policy",
    "build_tokenizer",
    "compact_result",
    "encode_prompt",
    "generate",
    "kind_of",
    "load_tensors",
    "render_prompt",
    "request_prompt",
    "sequence_logprobs",
    "sequence_scores",
    "span_scores",
    "state_tensors",
]
