"""The policy: tokenizer + tiny Qwen2 + action grammar; prompt encoding, sampling, scoring.

`generate` (the agent) and `sequence_logprobs` (the learner) compute the same constrained
distribution: logits at the position before each completion token, masked to the tokens the
grammar allows there, log-softmaxed. For unchanged weights their logprobs agree to float error.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from actors.lm._config import PolicyConfig
from actors.lm._grammar import END, ActionGrammar
from actors.lm._prompt import intro_text, step_text
from actors.lm._tokenizer import ACT, BOS, DX, PAD, build_tokenizer
from protocols.messages import ActRequest, Intro, Step

if TYPE_CHECKING:
    import torch

__all__ = [
    "Policy",
    "build_policy",
    "encode_prompt",
    "generate",
    "request_prompt",
    "sequence_logprobs",
    "sequence_scores",
    "span_scores",
]


@dataclasses.dataclass
class Policy:
    """What both the agent and the learner hold. `dataclasses.replace(p, grammar=...)` gives a
    view with a restricted action space sharing the same model."""

    config: PolicyConfig
    tokenizer: Any  # tokenizers.Tokenizer
    model: Any  # transformers Qwen2ForCausalLM
    grammar: ActionGrammar
    pad_id: int
    bos_id: int
    act_id: int
    dx_id: int  # the last turn's cue: only diagnoses may follow it
    dx_grammar: ActionGrammar

    def grammar_for(self, prompt: Sequence[int]) -> ActionGrammar:
        """The grammar a completion of `prompt` is sampled under: its last token (the cue) says."""
        return self.dx_grammar if prompt and prompt[-1] == self.dx_id else self.grammar


def _grammar(config: PolicyConfig) -> ActionGrammar:
    tok, actions = build_tokenizer(config)
    return _grammar_of(tok, actions, config.exams_per_order)


@functools.cache
def _grammar_of(tok: Any, actions: tuple[str, ...], max_exams: int) -> ActionGrammar:
    seqs = [tok.encode(a).ids for a in actions]
    end = tok.token_to_id(END) if max_exams > 1 else None
    return ActionGrammar(actions, seqs, tok.get_vocab_size(), max_exams=max_exams, end=end)


@functools.cache
def _diagnoses_of(grammar: ActionGrammar) -> ActionGrammar:
    return grammar.restrict(("diagnosis",))


def build_policy(config: PolicyConfig) -> Policy:
    """A fresh version-0 policy; the same config gives the same vocab and weights everywhere."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok, _ = build_tokenizer(config)
    grammar = _grammar(config)
    vocab = tok.get_vocab_size()  # type: ignore[attr-defined]
    qcfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_prompt_tokens + grammar.max_len + 8,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        pad_token_id=tok.token_to_id(PAD),  # type: ignore[attr-defined]
        bos_token_id=tok.token_to_id(BOS),  # type: ignore[attr-defined]
        eos_token_id=tok.token_to_id(PAD),  # type: ignore[attr-defined]
        use_cache=True,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(config.seed)
        model = Qwen2ForCausalLM(qcfg)
    finally:
        torch.random.set_rng_state(state)  # building a policy does not disturb the caller's RNG
    model.eval()
    return Policy(
        config=config,
        tokenizer=tok,
        model=model,
        grammar=grammar,
        pad_id=tok.token_to_id(PAD),  # type: ignore[attr-defined]
        bos_id=tok.token_to_id(BOS),  # type: ignore[attr-defined]
        act_id=tok.token_to_id(ACT),  # type: ignore[attr-defined]
        dx_id=tok.token_to_id(DX),  # type: ignore[attr-defined]
        dx_grammar=_diagnoses_of(grammar),
    )


def encode_prompt(
    policy: Policy, intro: Intro, steps: Sequence[Step], *, final: bool = False
) -> list[int]:
    """`<|bos|>` + intro + as many of the latest steps as fit + the cue (`<|act|>`, or `<|dx|>`
    with `final`: only a diagnosis may follow), at most `max_prompt_tokens` ids. The oldest steps
    go first; a single step too long for the room left keeps its end. Parts are tokenized
    separately (each ends in a line break).

    Each step is `<|act|>` + its action + what came back, so while nothing is cut, the prompt of
    turn k+1 is exactly turn k's prompt + its completion + the observation + the next cue: the
    learner scores a whole episode in one sequence (`span_scores`)."""
    tok = policy.tokenizer
    budget = policy.config.max_prompt_tokens
    head = [policy.bos_id, *tok.encode(intro_text(intro)).ids][: budget - 1]
    room = budget - len(head) - 1
    lists = policy.config.exams_per_order > 1
    parts = [[policy.act_id, *tok.encode(step_text(s, lists)).ids] for s in steps]
    kept: list[list[int]] = []
    for ids in reversed(parts):
        if room <= 0:
            break
        if len(ids) > room:
            kept.append(ids[len(ids) - room :])
            break
        kept.append(ids)
        room -= len(ids)
    cue = policy.dx_id if final else policy.act_id
    return [*head, *(t for ids in reversed(kept) for t in ids), cue]


def request_prompt(policy: Policy, request: ActRequest) -> list[int]:
    """The prompt of an agent turn: `encode_prompt`, with the `<|dx|>` cue on the episode's last
    turn (by the intro's `max_turns`) when the config asks for a final diagnosis."""
    limit = request.intro.max_turns
    turn = request.turn or len(request.steps)
    final = policy.config.final_diagnosis and limit > 0 and turn >= limit - 1
    return encode_prompt(policy, request.intro, request.steps, final=final)


def _batch(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, ...]:
    """Left-padded ids, attention mask, position ids (0 at each row's first real token)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            att[i, width - len(r) :] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    return ids, att, pos


def _check_prompts(prompts: Sequence[Sequence[int]], vocab: int) -> None:
    if not prompts:
        raise ValueError("no prompts")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary [0, {vocab})")


def generate(
    policy: Policy,
    prompts: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    max_new_tokens: int | None = None,
    grammar: ActionGrammar | None = None,
) -> list[tuple[list[int], list[float]]]:
    """Sample one action per prompt under the grammar: (token ids, logprob of each token).

    Each row's grammar is `grammar` if given, else the one its cue selects
    (`Policy.grammar_for`).

    Batched with left padding and a KV cache; a row stops when its action is complete. Each row
    draws from its own generator seeded by `seeds[i]` (reproducible whatever the batch), else
    from `generator` (or torch's global RNG). Logprobs are those of the masked, temperature-scaled
    distribution sampled from; a forced token (the only one allowed) has logprob 0 and draws no
    random number. Rows cut by `max_new_tokens` return an incomplete action.

    `temperature=0` decodes greedily: each row takes its most probable allowed token (the lowest
    id on a tie), draws nothing, and reports that token's logprob under the masked distribution
    at temperature 1 (the model's own belief; there is no sampling distribution to report). An
    evaluation decodes so; a learner never trains on such turns (it needs temperature > 0).

    Prompts of very different lengths (an episode's first turn next to its fourth) are generated
    in length buckets (`_length_buckets`), so little of the compute goes to padding."""
    import torch

    _check_prompts(prompts, policy.grammar.vocab)
    if temperature < 0:
        raise ValueError("temperature must be >= 0 (0: greedy)")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    gens = (
        [torch.Generator().manual_seed(int(s) & ((1 << 63) - 1)) for s in seeds]
        if seeds is not None
        else [generator] * len(prompts)
    )
    out: list[tuple[list[int], list[float]]] = [([], []) for _ in prompts]
    for bucket in _length_buckets([len(p) for p in prompts]):
        rows = _generate_bucket(
            policy,
            [prompts[i] for i in bucket],
            [grammar or policy.grammar_for(prompts[i]) for i in bucket],
            [gens[i] for i in bucket],
            temperature,
            max_new_tokens,
        )
        for i, row in zip(bucket, rows, strict=True):
            out[i] = row
    return out


PADDING_SLACK = 1.25  # a bucket's padded size may exceed its real tokens by this factor
MIN_BUCKET = 8  # ... unless it holds fewer rows than this (a forward pass has a fixed cost)


def _length_buckets(lengths: Sequence[int]) -> list[list[int]]:
    """Row indices in buckets of similar length: sorted, and a bucket closes when adding the next
    (longer) row would pad it beyond `PADDING_SLACK` times its real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        size = lengths[i]
        padded = (len(current) + 1) * size
        if len(current) >= MIN_BUCKET and padded > PADDING_SLACK * (real + size):
            buckets.append(current)
            current, real = [], 0
        current.append(i)
        real += size
    if current:
        buckets.append(current)
    return buckets


@functools.cache
def _cache_kwarg(model_class: type) -> str:
    """The KV cache's keyword: `cache` in recent transformers, where `past_key_values` is
    deprecated (removed in 5.40); `past_key_values` where `cache` does not exist yet."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _generate_bucket(
    policy: Policy,
    prompts: Sequence[Sequence[int]],
    grammars: Sequence[ActionGrammar],
    gens: Sequence[torch.Generator | None],
    temperature: float,
    max_new_tokens: int | None,
) -> list[tuple[list[int], list[float]]]:
    """`generate` for one bucket: left-padded, KV cache, one grammar walk per row."""
    import torch
    from transformers import DynamicCache

    limit = max(g.max_len for g in grammars) if max_new_tokens is None else max_new_tokens
    model = policy.model
    n = len(prompts)
    ids, att, pos = _batch(prompts, policy.pad_id)
    nodes = [0] * n
    out: list[tuple[list[int], list[float]]] = [([], []) for _ in range(n)]
    done = [False] * n
    cache = {_cache_kwarg(type(model.model)): DynamicCache(config=model.config)}
    with torch.no_grad():
        step_ids, step_pos = ids, pos
        for _ in range(limit):
            hidden = model.model(
                input_ids=step_ids,
                attention_mask=att,
                position_ids=step_pos,
                use_cache=True,
                **cache,
            ).last_hidden_state[:, -1]
            logits = model.lm_head(hidden).float()
            if temperature:
                logits = logits / temperature
            mask = torch.stack([g.node_mask(nd) for g, nd in zip(grammars, nodes, strict=True)])
            logp = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
            best = logp.argmax(dim=-1).tolist() if not temperature else []
            nxt = [policy.pad_id] * n
            for i in range(n):
                if done[i]:
                    continue
                kids = grammars[i].children(nodes[i])
                if len(kids) == 1:
                    tok, lp = kids[0], 0.0
                elif not temperature:
                    tok = best[i]
                    lp = float(logp[i, tok])
                else:
                    probs = logp[i].exp()
                    tok = int(torch.multinomial(probs, 1, generator=gens[i]))
                    lp = float(logp[i, tok])
                out[i][0].append(tok)
                out[i][1].append(lp)
                nodes[i] = grammars[i].step(nodes[i], tok)
                nxt[i] = tok
                done[i] = grammars[i].is_complete(nodes[i])
            if all(done):
                break
            step_ids = torch.tensor(nxt, dtype=torch.long)[:, None]
            step_pos = step_pos[:, -1:] + 1
            att = torch.cat([att, torch.ones((n, 1), dtype=att.dtype)], dim=1)
    return out


def sequence_logprobs(
    policy: Policy,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    constrained: bool = True,
    temperature: float = 1.0,
    grammar: ActionGrammar | None = None,
) -> list[torch.Tensor]:
    """Per-token logprobs of each completion under the model's current weights (differentiable).

    With `constrained`, the log-softmax is over the tokens the grammar allows at each position,
    exactly the distribution `generate` sampled from (same `temperature` and `grammar`)."""
    return sequence_scores(
        policy,
        prompts,
        completions,
        constrained=constrained,
        temperature=temperature,
        grammar=grammar,
    )[0]


def sequence_scores(
    policy: Policy,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    constrained: bool = True,
    temperature: float = 1.0,
    grammar: ActionGrammar | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`sequence_logprobs`, and the entropy of the (constrained) distribution at each completion
    position, both differentiable: the learner's entropy bonus uses the exact entropy."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    _check_prompts(prompts, policy.grammar.vocab)
    return span_scores(
        policy,
        [[*p, *c] for p, c in zip(prompts, completions, strict=True)],
        [[(len(p), len(c))] for p, c in zip(prompts, completions, strict=True)],
        constrained=constrained,
        temperature=temperature,
        grammar=grammar,
    )


def span_scores(
    policy: Policy,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[Sequence[tuple[int, int]]],
    *,
    constrained: bool = True,
    temperature: float = 1.0,
    grammar: ActionGrammar | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Logprobs and entropies (differentiable) of the completion tokens in each sequence, in order.

    `spans[i]` lists `(start, length)`: `sequences[i][start:start + length]` is one completion,
    sampled after the prompt `sequences[i][:start]`, whose last token (the cue) selects the
    grammar. One sequence can hold a whole episode (each turn's prompt extends the last turn's
    prompt and completion, see `encode_prompt`), so one forward pass scores all its turns."""
    import torch

    if len(sequences) != len(spans):
        raise ValueError(f"{len(sequences)} sequences for {len(spans)} span lists")
    _check_prompts(sequences, policy.grammar.vocab)
    ids, att, pos = _batch(sequences, policy.pad_id)
    width = ids.shape[1]
    picks_row, picks_col, targets, masks, sizes = [], [], [], [], []
    for i, (seq, row_spans) in enumerate(zip(sequences, spans, strict=True)):
        offset = width - len(seq)
        size = 0
        for start, length in row_spans:
            if start < 1 or length < 0 or start + length > len(seq):
                raise ValueError(f"span {(start, length)} does not fit sequence {i}")
            completion = seq[start : start + length]
            picks_row += [i] * length
            picks_col += range(offset + start - 1, offset + start + length - 1)
            targets += [int(t) for t in completion]
            if constrained and length:
                masks.append(
                    (grammar or policy.grammar_for(seq[start - 1 : start])).mask(completion)
                )
            size += length
        sizes.append(size)
    if not targets:
        empty = [torch.zeros(0) for _ in sequences]
        return empty, list(empty)
    hidden = policy.model.model(
        input_ids=ids, attention_mask=att, position_ids=pos
    ).last_hidden_state
    h = hidden[torch.tensor(picks_row), torch.tensor(picks_col)]
    logits = policy.model.lm_head(h).float() / temperature
    if constrained:
        logits = logits.masked_fill(~torch.cat(masks), float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, torch.tensor(targets)[:, None])[:, 0]
    p = logp.exp()
    # masked tokens have p = 0 and logp = -inf: zero them first (0 * -inf is nan, in the backward
    # pass too), so only the allowed tokens count
    entropy = -(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1)
    return list(torch.split(chosen, sizes)), list(torch.split(entropy, sizes))
