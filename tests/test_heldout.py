"""The held-out evaluation: the learner's current weights on cases it never trains on, one line
per evaluation in `eval.jsonl`, picked up again after a restart; bad settings fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import trio

pytest.importorskip("torch")

from actors.lm import PolicyConfig, build_policy  # noqa: E402
from engine.cluster import format_summary, learning_summary  # noqa: E402
from engine.logs import read_json_lines  # noqa: E402
from engine.spec import load_spec  # noqa: E402
from trainers.heldout import HeldOut, HeldOutConfig  # noqa: E402
from trainers.learner import LearnerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = PolicyConfig(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=600)
CONFIG = HeldOutConfig(cases="cases.bank:builtin", cases_args={"n": 6, "seed": 1}, every_min=1.0)


def heldout(out: Path, config: HeldOutConfig = CONFIG) -> HeldOut:
    return HeldOut(config, load_spec(ROOT / "engine" / "default.toml"), TINY, 1.0, out)


def test_evaluates_the_given_weights_and_appends_a_line(tmp_path: Path) -> None:
    out = tmp_path / "eval.jsonl"
    model = build_policy(TINY).model
    for p in model.parameters():  # weights the evaluator's own fresh policy does not have
        p.data.normal_(0.0, 0.5)

    async def main() -> None:
        h = heldout(out)
        await h.start()
        try:
            assert h.due(0.0)
            await h.run(model, step=0, version=0, elapsed_s=0.0)
            assert not h.due(59.0) and h.due(60.0)
            await h.run(model, step=7, version=7, elapsed_s=61.0)
            assert h.agent.policy is not None
            mine = h.agent.policy.model.state_dict()
            for name, tensor in model.state_dict().items():
                assert bool((mine[name] == tensor).all()), name
        finally:
            await h.close()

    trio.run(main)
    lines = read_json_lines(out)
    assert [(e["step"], e["version"], e["n"]) for e in lines] == [(0, 0, 6), (7, 7, 6)]
    for e in lines:
        for part in (e, e["greedy"]):  # sampled, and decoded greedily
            for metric in ("accuracy", "reward", "exam_f1"):
                low, high = part["ci95"][metric]
                assert 0.0 <= low <= part[metric] <= high <= 1.0
            assert 1 <= part["turns"] <= 4  # the default rules' max_turns
    # same weights, same episode ids: the same samples, so the same result
    assert lines[0]["accuracy"] == lines[1]["accuracy"]
    assert lines[0]["greedy"] == lines[1]["greedy"]

    # a restarted learner picks up the schedule where the file left it
    again = heldout(out)
    assert (again.last_s, again.version) == (61.0, 7)
    assert not again.due(100.0) and again.due(121.0)

    # the cluster's summary reports the first and last evaluation
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 7, "elapsed_s": 61.0, "accuracy": 0.1, "reward": 0.1}) + "\n"
    )
    held = learning_summary(tmp_path)["heldout"]
    assert held["n"] == 6 and held["accuracy_end"] == lines[-1]["accuracy"]
    assert held["greedy_accuracy_end"] == lines[-1]["greedy"]["accuracy"]
    summary = {"episodes": 1, "diagnosed": 1, "truncated": 0, "aborted": 0, "published": 1}
    summary |= {"accuracy": 0, "exam_f1": 0, "reward": 0, "cost": 0, "turns": 1}
    text = format_summary({**summary, "episodes_per_s": 1, "learning": learning_summary(tmp_path)})
    assert "held-out accuracy first -> last (6 cases)" in text
    assert "last, greedy decoding" in text


def test_greedy_decoding_is_an_option(tmp_path: Path) -> None:
    out = tmp_path / "eval.jsonl"
    model = build_policy(TINY).model

    async def main() -> None:
        h = heldout(out, msgspec.structs.replace(CONFIG, greedy=False))
        await h.start()
        try:
            await h.run(model, step=0, version=0, elapsed_s=0.0)
        finally:
            await h.close()

    trio.run(main)
    (line,) = read_json_lines(out)
    assert "greedy" not in line and 0.0 <= line["accuracy"] <= 1.0


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    out = tmp_path / "eval.jsonl"
    out.write_text('{"elapsed_s": 30.0, "version": 3}\n{"elapsed_s": 9')
    assert read_json_lines(out) == [{"elapsed_s": 30.0, "version": 3}]
    assert heldout(out).last_s == 30.0


def test_bad_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_min"):
        HeldOutConfig(cases="cases.bank:builtin", every_min=0)
    with pytest.raises(msgspec.ValidationError, match="every_mins"):
        msgspec.convert({"heldout": {"every_mins": 1}}, LearnerConfig)
    assert not LearnerConfig().heldout.enabled

    async def start(config: HeldOutConfig) -> None:
        h = heldout(tmp_path / "eval.jsonl", config)
        try:
            await h.start()
        finally:
            await h.close()

    with pytest.raises(ValueError, match="held-out cases.*no_such_module"):
        trio.run(start, HeldOutConfig(cases="no_such_module:cases"))
    with pytest.raises(ValueError, match="returned none"):
        trio.run(start, HeldOutConfig(cases="cases.bank:builtin", cases_args={"n": 0}))
