"""A byte-level BPE trained in-process on the case bank: no download, deterministic, cached.

Special tokens come first (`<|pad|>`, `<|bos|>`, `<|act|>`, the cue after which the action is
generated, and `<|dx|>`, the cue of an episode's last turn, after which only a diagnosis may
follow); then the learned BPE vocabulary; then added tokens: the six action tags and, with
`atomic_actions`, every action string as a single token (so an action is one sampling step and
the policy is a softmax over actions, which is what learns fastest from a few thousand episodes),
and with `exams_per_order > 1` the end of an exam list, `<|end|>`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from actors.lm._config import PolicyConfig
from actors.lm._grammar import END, KINDS, action_strings
from actors.lm._prompt import compact_result, intro_text
from protocols.messages import Intro

__all__ = ["ACT", "BOS", "DX", "END", "PAD", "SPECIALS", "TAGS", "build_tokenizer"]

PAD, BOS, ACT, DX = "<|pad|>", "<|bos|>", "<|act|>", "<|dx|>"
SPECIALS = (PAD, BOS, ACT, DX)
TAGS = tuple(t for k in KINDS for t in (f"<{k}>", f"</{k}>"))
_ANSWERED_CASES = 200  # cases whose answers to a few questions join the corpus (keeps it < 1 s)


def _corpus(corpus_cases: int, corpus_seed: int, actions: tuple[str, ...]) -> Iterator[str]:
    from actors.patient import answer_question
    from cases.bank import builtin

    questions = [a[len("<ask>") : -len("</ask>")] for a in actions if a.startswith("<ask>")]
    yield from actions
    for i, case in enumerate(builtin(corpus_cases, corpus_seed)):
        p = case.profile
        demo = p.demographics
        yield intro_text(Intro(age=demo.age, sex=demo.sex, chief_complaint=p.chief_complaint))
        yield p.history_of_present_illness
        yield " ".join(s.detail for s in p.symptoms if s.detail)
        yield " ".join([*p.past_history, *p.medications, *p.family_history, *p.social_history])
        yield from (f"{e.name}: {compact_result(e.result)}" for e in case.exams)
        if i < _ANSWERED_CASES and questions:
            for j in range(4):
                yield answer_question(case, questions[(7 * i + j) % len(questions)])


def build_tokenizer(config: PolicyConfig) -> tuple[object, tuple[str, ...]]:
    """(tokenizers.Tokenizer, action strings); the same config always gives the same vocab.

    Cached per process on the fields that shape it (not the model's size or seed)."""
    return _train(
        config.vocab,
        config.corpus_cases,
        config.corpus_seed,
        config.exams,
        config.atomic_actions,
        config.exams_per_order > 1,
    )


@functools.cache
def _train(
    vocab: int, corpus_cases: int, corpus_seed: int, exams: int, atomic: bool, lists: bool = False
) -> tuple[object, tuple[str, ...]]:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    actions = action_strings(corpus_cases, corpus_seed, exams)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    # repeated lines (normal results, shared phrases) add nothing but time
    corpus = dict.fromkeys(_corpus(corpus_cases, corpus_seed, actions))
    tok.train_from_iterator(list(corpus), trainer=trainer)
    # One matching pass (non-special added tokens, leftmost-longest): a whole action string wins
    # over its opening tag, and tags never merge with the text around them.
    added = [*TAGS, *(actions if atomic else ()), *((END,) if lists else ())]
    tok.add_tokens([AddedToken(t, single_word=False, normalized=False) for t in added])
    return tok, actions
