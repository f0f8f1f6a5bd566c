"""The `hf` agent's policy package: deterministic build, compact prompts, the action grammar,
generation logprobs that the learner's recomputation reproduces, and weight transfer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import msgspec
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.lm import (
    ActionGrammar,
    PolicyConfig,
    action_strings,
    build_policy,
    build_tokenizer,
    encode_prompt,
    generate,
    kind_of,
    load_tensors,
    render_prompt,
    sequence_logprobs,
    sequence_scores,
    span_scores,
    state_tensors,
)
from actors.lm._policy import MIN_BUCKET, PADDING_SLACK, _length_buckets
from actors.lm._tokenizer import _train
from cases.bank import CONDITIONS
from cases.catalogue import default_catalogue
from protocols.dialects import get_dialect
from protocols.messages import (
    AskPatient,
    Diagnose,
    ExamResult,
    ExamResults,
    Intro,
    OrderExam,
    PatientAnswer,
    RuleNotice,
    Step,
    TensorEntry,
    WeightManifest,
)

TINY = PolicyConfig(
    layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=600, corpus_cases=200
)
PIECES = msgspec.structs.replace(TINY, atomic_actions=False)  # names spelled with BPE pieces
LISTS = msgspec.structs.replace(TINY, exams_per_order=3)  # an order: 1 to 3 exams, then the end
INTRO = Intro(age=52, sex="male", chief_complaint="cough and weight loss")


def steps() -> list[Step]:
    return [
        Step(
            "<ask>Have you had a fever?</ask>",
            AskPatient("Have you had a fever?"),
            PatientAnswer("No, I haven't had a fever."),
        ),
        Step(
            "<exam>sodium</exam>",
            OrderExam(["sodium"]),
            ExamResults(
                [
                    ExamResult(
                        "sodium", "sodium", "128 mmol/L (low; reference 135-145)", 128.0, "mmol/L"
                    )
                ]
            ),
        ),
        Step("<exam>sodium</exam>", OrderExam(["sodium"]), RuleNotice("sodium already done")),
    ]


def vocab_digest(config: PolicyConfig) -> str:
    tok, _ = build_tokenizer(config)
    return hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, dtype, shape, raw in state_tensors(model):
        h.update(f"{name}{dtype}{shape}".encode())
        h.update(raw)
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny():
    return build_policy(TINY)


@pytest.fixture(scope="module")
def pieces():
    return build_policy(PIECES)


@pytest.fixture(scope="module")
def lists():
    return build_policy(LISTS)


# --- determinism ---------------------------------------------------------------------------------


def test_same_config_builds_the_same_policy_in_this_process(tiny):
    again = build_policy(TINY)
    a, b = tiny.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    digest = vocab_digest(TINY)
    _train.cache_clear()  # retrain from scratch
    assert vocab_digest(TINY) == digest
    other = build_policy(msgspec.structs.replace(TINY, seed=1))
    assert weights_digest(other.model) != weights_digest(tiny.model)


def test_same_config_builds_the_same_policy_in_another_process(tiny):
    code = (
        "from tests.test_lm import TINY, vocab_digest, weights_digest\n"
        "from actors.lm import build_policy\n"
        "print(vocab_digest(TINY), weights_digest(build_policy(TINY).model))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.split() == [vocab_digest(TINY), weights_digest(tiny.model)]


def test_building_a_policy_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_policy(TINY)
    assert torch.equal(torch.rand(3), expected)


def test_config_rejects_shapes_the_model_cannot_have():
    with pytest.raises(ValueError, match="divide by heads"):
        PolicyConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="kv_heads"):
        PolicyConfig(heads=4, kv_heads=3)


# --- prompts -------------------------------------------------------------------------------------


def test_prompt_shows_the_patient_and_every_step():
    text = render_prompt(INTRO, steps())
    lines = text.splitlines()
    assert lines[0] == "52 male: cough and weight loss"
    assert lines[1] == "<ask>Have you had a fever?</ask>No, I haven't had a fever."
    assert lines[2] == "<exam>sodium</exam>128 mmol/L (low)"  # flag kept, reference dropped
    assert lines[3] == "<exam>sodium</exam>notice: sodium already done"


def test_prompt_names_each_result_of_a_multi_exam_order():
    obs = ExamResults(
        [
            ExamResult("sodium", "sodium", "140 mmol/L (reference 135-145)", 140.0, "mmol/L"),
            ExamResult("xyz", "", "", found=False),
        ]
    )
    text = render_prompt(INTRO, [Step("", OrderExam(["sodium", "xyz"]), obs)])
    assert text.splitlines()[1] == "<exam>sodium; xyz</exam>sodium: 140 mmol/L; xyz: unknown exam"


def test_encoded_prompt_is_bos_intro_steps_cue(tiny):
    ids = encode_prompt(tiny, INTRO, steps())
    assert ids[0] == tiny.bos_id and ids[-1] == tiny.act_id
    assert tiny.tokenizer.decode(ids[1:-1]) == render_prompt(INTRO, steps())


@settings(max_examples=30, deadline=None)
@given(
    answers=st.lists(st.text(min_size=0, max_size=300), max_size=30),
    budget=st.integers(16, 120),
)
def test_long_histories_keep_the_intro_and_the_latest_steps(tiny, answers, budget):
    policy = dataclasses.replace(
        tiny, config=msgspec.structs.replace(tiny.config, max_prompt_tokens=budget)
    )
    history = [
        Step(f"<ask>q{i}</ask>", AskPatient(f"q{i}"), PatientAnswer(a))
        for i, a in enumerate(answers)
    ]
    ids = encode_prompt(policy, INTRO, history)
    head = [tiny.bos_id, *tiny.tokenizer.encode(render_prompt(INTRO, [])).ids]
    assert len(ids) <= budget
    assert ids[: len(head)] == head and ids[-1] == tiny.act_id
    if history:
        last = tiny.tokenizer.encode(render_prompt(INTRO, history[-1:])).ids[len(head) - 1 :]
        tail = ids[len(head) : -1]
        # the newest step is there whole, or its end fills all the room there is
        assert tail[-len(last) :] == last or tail == last[len(last) - len(tail) :]


# --- grammar -------------------------------------------------------------------------------------


def test_action_space_covers_diagnoses_exams_and_questions():
    actions = action_strings(TINY.corpus_cases, TINY.corpus_seed, 0)
    kinds = [kind_of(a) for a in actions]
    assert kinds.count("diagnosis") == len(CONDITIONS)
    assert kinds.count("exam") == len(default_catalogue().entries)
    assert kinds.count("ask") >= 100
    few = action_strings(TINY.corpus_cases, TINY.corpus_seed, 10)
    assert [kind_of(a) for a in few].count("exam") == 10


@pytest.mark.parametrize("which", ["tiny", "pieces"])
def test_every_grammar_action_parses_to_its_action(which, request):
    policy = request.getfixturevalue(which)
    native = get_dialect("native")
    g = policy.grammar
    for text, seq in zip(g.actions, g.sequences, strict=True):
        action = native.parse(policy.tokenizer.decode(list(seq)))
        assert (
            type(action)
            is {"diagnosis": Diagnose, "exam": OrderExam, "ask": AskPatient}[kind_of(text)]
        )
        assert g.action_of(seq) == text
        assert g.allowed(seq) == []


def test_allowed_and_mask_walk_the_trie(pieces):
    g = pieces.grammar
    seq = g.sequences[0]
    m = g.mask(seq)
    assert m.shape == (len(seq), g.vocab)
    for i in range(len(seq)):
        allowed = g.allowed(seq[:i])
        assert seq[i] in allowed
        assert sorted(torch.nonzero(m[i]).flatten().tolist()) == sorted(allowed)
    first = set(g.allowed([]))
    assert first == {s[0] for s in g.sequences}
    assert len(seq) > 1 and len(g.allowed(seq[:-1])) == 1  # the closing tag is forced
    with pytest.raises(ValueError, match="continues no action"):
        g.allowed([seq[0], pieces.pad_id])
    with pytest.raises(ValueError, match="past a complete action"):
        g.mask([*seq, seq[0]])


def two_exam_step(policy) -> Step:
    a, b = exam_names(policy)[:2]
    results = [ExamResult(n, n, f"{n} result") for n in (a, b)]
    return Step(f"<exam>{a}; {b}</exam>", OrderExam([a, b]), ExamResults(results))


def exam_names(policy) -> list[str]:
    return [
        x[len("<exam>") : -len("</exam>")] for x in policy.grammar.actions if kind_of(x) == "exam"
    ]


def test_an_exam_order_is_a_list_of_exam_tokens_and_an_end(lists):
    g = lists.grammar
    native = get_dialect("native")
    a, b, c, d = exam_names(lists)[:4]
    exam = {n: g.encode(f"<exam>{n}</exam>")[0] for n in (a, b, c, d)}
    end = lists.tokenizer.token_to_id("<|end|>")
    assert g.encode(f"<exam>{a}</exam>") == [exam[a], end]  # one exam: a list of one
    order = g.encode(f"<exam>{a}; {b}</exam>")
    assert order == [exam[a], exam[b], end]
    assert g.action_of(order) == f"<exam>{a}; {b}</exam>"
    assert native.parse(g.action_of(order)) == OrderExam([a, b])
    exams = set(exam_names(lists))
    after_one = set(g.allowed([exam[a]]))
    assert after_one == {g.encode(f"<exam>{n}</exam>")[0] for n in exams} | {end}
    assert g.allowed([exam[a], exam[b], exam[c]]) == [end]  # the third exam is the last: forced
    assert g.allowed(order) == [] and g.max_len == 4
    m = g.mask(order)
    assert sorted(torch.nonzero(m[1]).flatten().tolist()) == sorted(after_one)
    # orders it cannot spell: too many exams, an unknown exam
    assert g.encode(f"<exam>{a}; {b}; {c}; {d}</exam>") is None
    assert g.encode(f"<exam>{a}; no such exam</exam>") is None
    with pytest.raises(ValueError, match="past a complete action"):
        g.mask([*order, exam[a]])
    # the other actions are as without lists; the last turn's grammar has no exams
    assert g.encode("<ask>Have you had a fever?</ask>") == tiny_encode(
        lists, "<ask>Have you had a fever?</ask>"
    )
    assert lists.dx_grammar.max_exams == 1 and lists.dx_grammar.max_len == 1
    # the prompt writes an order as the grammar spells it
    text = render_prompt(INTRO, [two_exam_step(lists)], exam_lists=True)
    assert f"<exam>{a}</exam><exam>{b}</exam><|end|>" in text


def tiny_encode(policy, action: str) -> list[int]:
    return policy.tokenizer.encode(action).ids


def test_exam_lists_need_atomic_actions_and_a_free_end_token():
    with pytest.raises(ValueError, match="exams_per_order"):
        PolicyConfig(atomic_actions=False, exams_per_order=2)
    with pytest.raises(ValueError, match="exams_per_order"):
        PolicyConfig(exams_per_order=0)
    actions = ["<exam>a</exam>", "<diagnosis>x</diagnosis>"]
    with pytest.raises(ValueError, match="end token"):
        ActionGrammar(actions, [[1], [2]], 10, max_exams=2)
    with pytest.raises(ValueError, match="end token"):
        ActionGrammar(actions, [[1], [2]], 10, max_exams=2, end=2)
    with pytest.raises(ValueError, match="one token per exam"):
        ActionGrammar(actions, [[1, 3], [2]], 10, max_exams=2, end=4)


def test_grammar_refuses_an_action_that_prefixes_another():
    with pytest.raises(ValueError, match="prefix"):
        ActionGrammar(["<ask>a</ask>", "<ask>a</ask>b"], [[1, 2], [1, 2, 3]], 10)


def test_restricted_grammar_keeps_only_those_kinds(tiny):
    dx = tiny.grammar.restrict(("diagnosis",))
    assert len(dx) == len(CONDITIONS)
    assert all(a.startswith("<diagnosis>") for a in dx.actions)
    with pytest.raises(ValueError, match="unknown action kinds"):
        tiny.grammar.restrict(("guess",))


# --- generation and scoring ----------------------------------------------------------------------


def prompts_of(policy):
    """Every prefix of a history, twice, and once more with the last turn's cue."""
    history = steps()
    return [
        encode_prompt(policy, INTRO, history[:k], final=final)
        for k in range(len(history) + 1)
        for final in (False, False, True)
    ]


@pytest.mark.parametrize("which", ["tiny", "pieces", "lists"])
def test_sampled_logprobs_equal_the_learners_recomputation(which, request):
    policy = request.getfixturevalue(which)
    prompts = prompts_of(policy)
    out = generate(policy, prompts, seeds=list(range(len(prompts))))
    completions = [tokens for tokens, _ in out]
    for prompt, (tokens, logprobs) in zip(prompts, out, strict=True):
        assert policy.grammar.action_of(tokens)  # complete, valid actions
        if prompt[-1] == policy.dx_id:  # the last turn's cue: a diagnosis, scored as one
            assert policy.grammar.action_of(tokens).startswith("<diagnosis>")
        assert len(tokens) == len(logprobs) and all(lp <= 0 for lp in logprobs)
    with torch.no_grad():
        again = sequence_logprobs(policy, prompts, completions)
    for (_, logprobs), lp in zip(out, again, strict=True):
        assert torch.allclose(lp, torch.tensor(logprobs), atol=1e-5)
    if which == "pieces":  # forced tokens (closing tags) have logprob 0 in both
        assert all(lp[-1] == 0.0 for _, lp in out)


def test_sampling_is_reproducible_per_seed_whatever_the_batch(tiny):
    prompts = prompts_of(tiny)
    seeds = [11 * i for i in range(len(prompts))]
    whole = generate(tiny, prompts, seeds=seeds)
    alone = [generate(tiny, [p], seeds=[s])[0] for p, s in zip(prompts, seeds, strict=True)]
    assert [t for t, _ in whole] == [t for t, _ in alone]
    for (_, a), (_, b) in zip(whole, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_greedy_decoding_takes_the_most_probable_allowed_token_at_every_step(pieces):
    prompts = prompts_of(pieces)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    greedy = generate(pieces, prompts, temperature=0, generator=gen)
    assert bool((gen.get_state() == state).all())  # no random number drawn
    assert greedy == generate(pieces, prompts, temperature=0, seeds=list(range(len(prompts))))
    for prompt, (tokens, lps) in zip(prompts, greedy, strict=True):
        grammar = pieces.grammar_for(prompt)
        assert grammar.is_complete(grammar.node(tokens))
        # recomputed at temperature 1: each chosen token is the argmax of its masked row, and
        # the reported logprobs are the model's own
        (ref,) = sequence_logprobs(pieces, [prompt], [tokens])
        assert lps == pytest.approx(ref.tolist(), abs=1e-5)
        with torch.no_grad():
            logits = pieces.model(torch.tensor([[*prompt, *tokens]])).logits[0].float()
        rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
        masked = rows.masked_fill(~grammar.mask(tokens), float("-inf"))
        assert masked.argmax(dim=-1).tolist() == tokens


def test_restricted_generation_only_produces_those_actions(tiny):
    dx = tiny.grammar.restrict(("diagnosis",))
    prompts = prompts_of(tiny)
    out = generate(tiny, prompts, seeds=list(range(len(prompts))), grammar=dx)
    assert all(dx.action_of(t).startswith("<diagnosis>") for t, _ in out)


def test_sequence_logprobs_is_differentiable(pieces):
    prompts = prompts_of(pieces)
    out = generate(pieces, prompts, seeds=list(range(len(prompts))))
    lps = sequence_logprobs(pieces, prompts, [t for t, _ in out])
    pieces.model.zero_grad()
    torch.stack([lp.sum() for lp in lps]).sum().backward()
    grad = pieces.model.model.embed_tokens.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    pieces.model.zero_grad()
    free = sequence_logprobs(pieces, prompts, [t for t, _ in out], constrained=False)
    assert all((f <= c + 1e-6).all() for f, c in zip(free, lps, strict=True))


def test_bad_inputs_are_refused_clearly(tiny):
    with pytest.raises(ValueError, match="empty"):
        generate(tiny, [[]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(tiny, [[10**6]])
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny, [[tiny.bos_id]], temperature=-0.5)
    with pytest.raises(ValueError, match="continues no action"):
        sequence_logprobs(tiny, [[tiny.bos_id]], [[tiny.pad_id]])


# --- weights -------------------------------------------------------------------------------------


def manifest_of(tensors, version: int = 1) -> tuple[WeightManifest, dict[str, memoryview]]:
    entries, named, offset = [], {}, 0
    for name, dtype, shape, raw in tensors:
        sha = hashlib.sha256(raw).hexdigest()
        entries.append(TensorEntry(name, dtype, shape, offset, len(raw), sha))
        named[name] = memoryview(raw)
        offset += len(raw)
    return WeightManifest(version, entries, 4 << 20, offset), named


def test_weights_round_trip_between_models():
    src = build_policy(msgspec.structs.replace(TINY, seed=1)).model
    dst = build_policy(TINY).model
    tensors = state_tensors(src)
    names = [t[0] for t in tensors]
    assert "lm_head.weight" not in names  # tied to the embedding: sent once
    assert all(dtype == "float32" for _, dtype, _, _ in tensors)
    load_tensors(dst, *reversed(manifest_of(tensors)))
    assert weights_digest(dst) == weights_digest(src)
    assert torch.equal(dst.lm_head.weight, src.model.embed_tokens.weight)


def corrupt(kind: str, tensors):
    tensors = list(tensors)
    name, dtype, shape, raw = tensors[0]
    if kind == "missing":
        return tensors[1:]
    if kind == "shape":
        tensors[0] = (name, dtype, [shape[0] + 1, *shape[1:]], raw + bytes(4 * shape[1]))
    elif kind == "dtype":
        tensors[0] = (name, "float16", shape, raw[: len(raw) // 2])
    elif kind == "extra":
        tensors.append(("model.bogus", "float32", [1], bytes(4)))
    elif kind == "nan":
        tensors[0] = (name, dtype, shape, bytes.fromhex("0000c07f") * (len(raw) // 4))
    return tensors


@pytest.mark.parametrize("kind", ["missing", "shape", "dtype", "extra", "nan", "short"])
def test_mismatched_weights_are_refused_and_leave_the_model_unchanged(kind):
    src = build_policy(msgspec.structs.replace(TINY, seed=1)).model
    dst = build_policy(TINY).model
    before = weights_digest(dst)
    manifest, named = manifest_of(corrupt(kind, state_tensors(src)))
    if kind == "short":
        last = manifest.tensors[-1].name
        named[last] = named[last][:-4]
    with pytest.raises(ValueError):
        load_tensors(dst, named, manifest)
    assert weights_digest(dst) == before


def test_weights_travel_through_engine_weights_pack():
    weights = pytest.importorskip("engine.weights")
    src = build_policy(msgspec.structs.replace(TINY, seed=1)).model
    dst = build_policy(TINY).model
    manifest, blob = weights.pack(3, state_tensors(src))
    load_tensors(dst, weights.unpack(manifest, blob), manifest)
    assert weights_digest(dst) == weights_digest(src)


def test_the_last_turns_cue_allows_only_diagnoses(tiny):
    """After `<|dx|>` the sampled action is always a diagnosis, and the learner scores it under
    the diagnosis-only distribution (higher logprob than under the full action space)."""
    final = encode_prompt(tiny, INTRO, steps(), final=True)
    assert final[-1] == tiny.dx_id and final[:-1] == encode_prompt(tiny, INTRO, steps())[:-1]
    out = generate(tiny, [final] * 32, seeds=list(range(32)))
    assert {tiny.grammar.action_of(t)[:11] for t, _ in out} == {"<diagnosis>"}
    tokens = out[0][0]
    open_prompt = [*final[:-1], tiny.act_id]
    with torch.no_grad():
        restricted, full = sequence_logprobs(tiny, [final, open_prompt], [tokens, tokens])
    assert float(restricted.sum()) > float(full.sum())


@given(st.lists(st.integers(1, 400), min_size=1, max_size=300))
def test_length_buckets_partition_the_rows_and_bound_the_padding(lengths):
    buckets = _length_buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for b in buckets:
        sizes = [lengths[i] for i in b]
        assert len(b) <= MIN_BUCKET or len(b) * max(sizes) <= PADDING_SLACK * sum(sizes)
    for a, b in zip(buckets, buckets[1:], strict=False):  # ascending: no bucket straddles another
        assert max(lengths[i] for i in a) <= min(lengths[i] for i in b)


@pytest.mark.parametrize("which", ["tiny", "pieces", "lists"])
def test_a_whole_episode_scores_in_one_sequence_as_turn_by_turn(which, request):
    """Turn k+1's prompt is turn k's prompt + its action + what came back + the cue, so one
    packed sequence with a span per turn gives the same logprobs and entropies as one row per
    turn (the learner packs episodes this way)."""
    policy = request.getfixturevalue(which)
    native = get_dialect("native")
    history = steps()
    if which == "lists":  # and an order of two exams
        history.append(two_exam_step(policy))
    actions = [policy.grammar.encode(native.render_action(s.action)) for s in history]
    assert all(actions)
    prompts = [encode_prompt(policy, INTRO, history[:k]) for k in range(len(history))]
    prompts.append(encode_prompt(policy, INTRO, history, final=True))
    final = generate(policy, [prompts[-1]], seeds=[3])[0][0]
    completions = [*actions, final]
    for k in range(len(prompts) - 1):  # the chain the learner checks
        assert prompts[k + 1][: len(prompts[k]) + len(completions[k])] == [
            *prompts[k],
            *completions[k],
        ]
    packed = [*prompts[-1], *final]
    spans = [(len(p), len(c)) for p, c in zip(prompts, completions, strict=True)]
    with torch.no_grad():
        (lp,), (ent,) = span_scores(policy, [packed], [spans])
        each, each_ent = sequence_scores(policy, prompts, completions)
    assert torch.allclose(lp, torch.cat(each), atol=1e-5)
    assert torch.allclose(ent, torch.cat(each_ent), atol=1e-5)
