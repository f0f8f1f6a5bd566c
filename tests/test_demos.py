"""The cold start: a scripted demonstrator's episodes recorded as the `hf` policy's tokens, cloned
into the policy before GRPO, once per run; bad settings fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import trio

pytest.importorskip("torch")

import torch  # noqa: E402

from actors.agent import HeuristicAgent, HeuristicAgentConfig  # noqa: E402
from actors.lm import PolicyConfig, build_policy, request_prompt, span_scores  # noqa: E402
from engine.actor import ConfigError  # noqa: E402
from engine.spec import load_spec  # noqa: E402
from protocols import OrderExam, unpack_ids  # noqa: E402
from protocols.messages import ActRequest, Intro  # noqa: E402
from trainers.demos import DemosConfig, Recorder, clone, collect  # noqa: E402
from trainers.learner import Learner, LearnerConfig  # noqa: E402
from trainers.trainer import OptimConfig, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = PolicyConfig(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=600)
CLINICIAN = "actors.agent:HeuristicAgent"
ONE_EXAM = {"max_exams_per_order": 1}  # the policy's grammar orders one exam per action


def spec():  # type: ignore[no-untyped-def]
    """The default spec on its bank's first 200 cases (the same cases: the bank is prefix-stable);
    the tests clone at most 24 of them."""
    default = load_spec(ROOT / "engine" / "default.toml")
    scheduler = msgspec.structs.replace(default.scheduler, cases_args={"n": 200, "seed": 0})
    return msgspec.structs.replace(default, scheduler=scheduler)


def demos(**kw: object) -> DemosConfig:
    return DemosConfig(
        **{"agent": CLINICIAN, "agent_config": ONE_EXAM, "cases": 24, "steps": 20, **kw}
    )


def test_a_recorded_turn_is_the_prompt_and_action_tokens_the_hf_agent_would_have_used() -> None:
    policy = build_policy(TINY)
    recorder = Recorder(HeuristicAgent(HeuristicAgentConfig(max_exams_per_order=1)), policy)
    for max_turns, cue in ((4, policy.act_id), (1, policy.dx_id)):  # a last turn only diagnoses
        intro = Intro(age=52, sex="male", chief_complaint="cough", max_turns=max_turns)
        request = ActRequest(episode_id="e", intro=intro, steps=[])
        reply = trio.run(recorder.act, request)
        prompt = unpack_ids(reply.prompt_ids)
        assert prompt == request_prompt(policy, request) and prompt[-1] == cue
        assert policy.grammar.action_of(unpack_ids(reply.token_ids)) == reply.text
        assert reply.action is None  # the episode parses the text, as it parses the hf agent's
    assert reply.text.startswith("<diagnosis>") and "<differential>" not in reply.text


def test_an_action_outside_the_grammar_is_passed_on_without_tokens() -> None:
    class TwoExams(HeuristicAgent):
        def decide(self, request: ActRequest) -> OrderExam:  # type: ignore[override]
            return OrderExam(names=["sodium", "potassium"])

    recorder = Recorder(TwoExams(), build_policy(TINY))
    intro = Intro(age=52, sex="male", chief_complaint="cough", max_turns=4)
    reply = trio.run(recorder.act, ActRequest(episode_id="e", intro=intro, steps=[]))
    assert reply.action == OrderExam(names=["sodium", "potassium"]) and not reply.token_ids


def test_collected_rows_are_whole_correct_episodes_and_cloning_makes_them_likelier() -> None:
    policy = build_policy(TINY)
    rows = trio.run(collect, demos(), spec(), policy)
    assert 0 < len(rows) <= 24  # one packed row per cloned episode
    for row in rows:
        completions = [row.ids[s : s + n] for s, n in row.spans]
        actions = [policy.grammar.action_of(c) for c in completions]
        assert actions[-1].startswith("<diagnosis>")  # every episode ends in its diagnosis
        assert all(not a.startswith("<diagnosis>") for a in actions[:-1])
        assert row.ids[row.spans[-1][0] - 1] == policy.dx_id or len(row.spans) < 4

    def mean_logprob() -> float:
        with torch.no_grad():
            lps, _ = span_scores(policy, [r.ids for r in rows], [r.spans for r in rows])
        return float(torch.cat(lps).mean())

    before = mean_logprob()
    config = demos(steps=30, batch=8)
    stats = clone(policy, rows, config)
    assert stats["steps"] == 30 and stats["rows"] == len(rows)
    # the learning rate ends its cosine near the floor (the last of 30 updates: 29/30 of the way)
    assert config.lr * config.lr_floor <= stats["lr_last"] < config.lr * (config.lr_floor + 0.01)
    assert mean_logprob() > before + 1.0  # nats per action token
    # with every episode, wrong ones too, there are at least as many rows
    assert len(trio.run(collect, demos(correct_only=False), spec(), policy)) >= len(rows)


def test_the_clone_may_take_more_threads_and_gives_them_back() -> None:
    policy = build_policy(TINY)
    rows = trio.run(collect, demos(cases=8), spec(), policy)
    before = torch.get_num_threads()
    stats = clone(policy, rows, demos(steps=2, batch=4, threads=before + 1))
    assert stats["threads"] == before + 1 and stats["steps"] == 2
    assert torch.get_num_threads() == before
    assert clone(policy, rows, demos(steps=1, batch=4))["threads"] == before  # 0: the learner's


def test_multi_exam_orders_are_not_cloned() -> None:
    policy = build_policy(TINY)
    one = trio.run(collect, demos(), spec(), policy)
    try:
        many = trio.run(collect, demos(agent_config={}), spec(), policy)  # orders exam panels
    except ValueError as exc:  # every episode ordered a panel
        assert "can be cloned" in str(exc)
        return
    assert len(many) < len(one)
    for row in many:
        for s, n in row.spans:
            assert not policy.grammar.action_of(row.ids[s : s + n]).count("<exam>") > 1


def test_with_exam_lists_the_clinicians_orders_of_several_exams_are_cloned() -> None:
    policy = build_policy(msgspec.structs.replace(TINY, exams_per_order=8))
    rows = trio.run(collect, demos(agent_config={}), spec(), policy)  # the full clinician
    sizes = []
    for row in rows:
        actions = [policy.grammar.action_of(row.ids[s : s + n]) for s, n in row.spans]
        assert actions[-1].startswith("<diagnosis>")
        sizes += [a.count(";") + 1 for a in actions if a.startswith("<exam>")]
    assert max(sizes) > 1  # panels, as the clinician ordered them

    class TwoExams(HeuristicAgent):
        def decide(self, request: ActRequest) -> OrderExam:  # type: ignore[override]
            return OrderExam(names=names)

    names = [a[6:-7] for a in policy.grammar.actions if a.startswith("<exam>")][:2]
    intro = Intro(age=52, sex="male", chief_complaint="cough", max_turns=4)
    request = ActRequest(episode_id="e", intro=intro, steps=[])
    reply = trio.run(Recorder(TwoExams(), policy).act, request)
    assert reply.text == f"<exam>{names[0]}; {names[1]}</exam>"
    assert policy.grammar.action_of(unpack_ids(reply.token_ids)) == reply.text


def test_the_learner_clones_once_per_run_and_a_resumed_run_does_not_again(
    tmp_path: Path,
) -> None:
    config = LearnerConfig(policy=TINY, optim=OptimConfig(), demos=demos(steps=5))

    def learner() -> Learner:
        return Learner(config, 1, tmp_path, Trainer(TINY, OptimConfig()))

    first = learner()
    trio.run(first.cold_start, spec())
    assert first.trainer.version == 1 and first.trainer.steps == 0
    assert first.floor == 1  # the random policy's rollouts are not trained on
    record = json.loads((tmp_path / "demos.json").read_text())
    assert record["agent"] == CLINICIAN and record["steps"] == 5
    fresh = build_policy(TINY).model.state_dict()
    cloned = first.trainer.model.state_dict()
    assert any(not torch.equal(fresh[k], cloned[k]) for k in fresh)

    (tmp_path / "demos.json").unlink()
    again = learner()
    assert again.resume() and again.trainer.version == 1 and again.floor == 1
    trio.run(again.cold_start, spec())
    assert not (tmp_path / "demos.json").exists()  # nothing cloned twice
    for k, v in again.trainer.model.state_dict().items():
        assert torch.equal(v, cloned[k]), k


def test_a_stop_during_the_clone_ends_it_and_leaves_version_0(tmp_path: Path) -> None:
    policy = build_policy(TINY)
    rows = trio.run(collect, demos(cases=8), spec(), policy)
    asked = []

    def should_stop() -> bool:  # asked before each update: stop before the fourth
        asked.append(1)
        return len(asked) > 3

    stats = clone(policy, rows, demos(steps=50, batch=4), should_stop=should_stop)
    assert stats["steps"] == 3 and stats["stopped"] == 1

    # the learner asked to stop (`down`, SIGTERM) mid-clone: no version 1, no demos.json, so a
    # resumed run clones again
    config = LearnerConfig(policy=TINY, optim=OptimConfig(), demos=demos(steps=50))
    learner = Learner(config, 1, tmp_path, Trainer(TINY, OptimConfig()))
    learner.request_stop("SIGTERM")
    trio.run(learner.cold_start, spec())
    assert learner.trainer.version == 0 and not (tmp_path / "demos.json").exists()
    assert learner.floor == 0


def test_the_clone_does_not_outlast_the_training_budget(tmp_path: Path) -> None:
    """`up --minutes 1` with a 60-minute clone: the clone is counted in the budget, so it stops
    when the budget is spent (here at once, after its one update) and is still version 1."""
    clone_for_an_hour = DemosConfig(agent=CLINICIAN, agent_config=ONE_EXAM, cases=24, minutes=60)
    config = LearnerConfig(policy=TINY, minutes=1e-4, demos=clone_for_an_hour)
    learner = Learner(config, 1, tmp_path, Trainer(TINY, OptimConfig()))
    trio.run(learner.cold_start, spec())
    record = json.loads((tmp_path / "demos.json").read_text())
    assert record["steps"] == 1 and record["seconds"] < 60
    assert learner.trainer.version == 1 and learner.done()


def test_no_spec_means_no_cold_start(tmp_path: Path) -> None:
    learner = Learner(
        LearnerConfig(policy=TINY, demos=demos()), 1, tmp_path, Trainer(TINY, OptimConfig())
    )
    trio.run(learner.cold_start, None)
    assert learner.trainer.version == 0


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(ValueError, match="DemosConfig"):
        DemosConfig(agent=CLINICIAN, minutes=0)
    with pytest.raises(ValueError, match="lr_floor"):
        DemosConfig(agent=CLINICIAN, lr_floor=1.5)
    with pytest.raises(ValueError, match="threads"):
        DemosConfig(agent=CLINICIAN, threads=-1)
    with pytest.raises(msgspec.ValidationError, match="agnt"):
        msgspec.convert({"demos": {"agnt": CLINICIAN}}, LearnerConfig)
    with pytest.raises(ConfigError, match="NoSuchAgent"):
        trio.run(collect, demos(agent="actors.agent:NoSuchAgent"), spec(), build_policy(TINY))
    with pytest.raises(ConfigError, match="max_exams"):
        trio.run(collect, demos(agent_config={"max_exams": 1}), spec(), build_policy(TINY))


def test_the_default_clones_the_clinician() -> None:
    learner = spec().learner
    assert learner is not None
    config = msgspec.convert(learner.config, LearnerConfig)
    assert config.demos.agent == CLINICIAN and config.demos.agent_config == {}  # the full one
    assert config.policy.exams_per_order == 8  # so the policy can order its panels


def test_the_demonstrator_is_measured_with_its_config_beside_the_baselines(tmp_path: Path) -> None:
    from trainers.eval_agents import load_cases
    from trainers.learner import evaluate_baselines

    spec_path = tmp_path / "spec.json"
    spec_path.write_bytes(msgspec.json.encode(spec()))
    cases = load_cases("cases.bank:builtin", {"n": 40, "seed": 1})
    config = LearnerConfig(demos=demos(), baselines={"heuristic": CLINICIAN})
    out = tmp_path / "baselines.json"
    trio.run(evaluate_baselines, config, spec_path, out, cases)
    results = json.loads(out.read_text())
    assert set(results) == {"heuristic", "demonstrator"}
    assert results["demonstrator"]["n"] == results["heuristic"]["n"] == 40
    # one exam per order: more orders for the same exams, so more turns than the clinician
    assert results["demonstrator"]["turns"] > results["heuristic"]["turns"]

    # its config is the demonstrator's own: a wrong key fails as it would in the clone
    bad = LearnerConfig(demos=demos(agent_config={"max_exam_per_order": 1}))
    with pytest.raises(ConfigError, match="max_exam_per_order"):
        trio.run(evaluate_baselines, bad, spec_path, tmp_path / "bad.json", cases)

    # a demonstrator that is one of the baselines as it stands is not measured twice
    same = LearnerConfig(demos=demos(agent_config={}), baselines={"heuristic": CLINICIAN})
    trio.run(evaluate_baselines, same, spec_path, tmp_path / "same.json", cases)
    assert set(json.loads((tmp_path / "same.json").read_text())) == {"heuristic"}
