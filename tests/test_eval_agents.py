"""The agents evaluation: bootstrap intervals, the in-process episode runner and the CLI."""

from __future__ import annotations

import json
import math
import os

import pytest
import trio

pytest.importorskip("numpy")
pytest.importorskip("matplotlib")

from actors.agent import HeuristicAgent  # noqa: E402
from cases.bank import builtin  # noqa: E402
from engine.actor import Actor, handles  # noqa: E402
from engine.episode import Episode, Rules  # noqa: E402
from engine.worker import build_actor  # noqa: E402
from protocols import ActReply, ActRequest, Terminal  # noqa: E402
from trainers.eval_agents import (  # noqa: E402
    EXAMINER,
    JUDGE,
    PATIENT,
    Services,
    bootstrap_ci,
    load_cases,
    main,
    run_episode,
    summarise,
)

# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_of_a_constant_sample_is_a_point() -> None:
    assert bootstrap_ci([1.0] * 50) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([0.0] * 7, resamples=2000) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_n() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    small = rng.random(50) < 0.3
    large = rng.random(2000) < 0.3
    m, lo, hi = bootstrap_ci(small.astype(float), resamples=1000, seed=3)
    assert m == pytest.approx(small.mean())
    assert lo < m < hi and 0.0 <= lo and hi <= 1.0
    m2, lo2, hi2 = bootstrap_ci(large.astype(float), resamples=1000, seed=3)
    assert lo2 < 0.3 < hi2  # the true p is covered
    assert hi2 - lo2 < hi - lo
    # the normal approximation of a proportion's 95% interval
    se = (m2 * (1 - m2) / large.size) ** 0.5
    assert hi2 - lo2 == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_is_seeded() -> None:
    x = [0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.25]
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    assert all(math.isnan(x) for x in bootstrap_ci([]))  # no data, no interval
    assert bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)


# --- the in-process runner ------------------------------------------------------------------------


class AsyncHeuristic(Actor):
    """The heuristic clinician behind a coroutine handler (as an LLM-backed agent would be)."""

    service = "agent"

    def __init__(self, config: object = None) -> None:
        super().__init__(config)
        self.inner = HeuristicAgent()

    @handles(ActRequest)
    async def act(self, request: ActRequest) -> ActReply:
        await trio.sleep(0)
        return self.inner.act(request)


class Broken(Actor):
    service = "agent"

    @handles(ActRequest)
    def act(self, request: ActRequest) -> ActReply:
        raise RuntimeError("boom")


def _services(agent: Actor) -> Services:
    return Services(
        {
            "agent": agent,
            "patient": build_actor(PATIENT, None),
            "examiner": build_actor(EXAMINER, None),
            "judge": build_actor(JUDGE, None),
        }
    )


def test_sync_and_async_handlers_give_the_same_episode() -> None:
    case = builtin(5)[3]

    async def both():
        a = await run_episode(_services(HeuristicAgent()), Episode("e", case, Rules()))
        b = await run_episode(_services(AsyncHeuristic()), Episode("e", case, Rules()))
        return a, b

    a, b = trio.run(both)
    assert a.terminal == b.terminal == Terminal.DIAGNOSED
    assert a.verdict == b.verdict and a.verdict is not None and a.verdict.correct
    assert [t.action for t in a.turns] == [t.action for t in b.turns]


def test_a_failing_actor_aborts_the_episode_and_counts_as_wrong() -> None:
    case = builtin(1)[0]
    traj = trio.run(run_episode, _services(Broken()), Episode("e", case, Rules()))
    assert traj.terminal == Terminal.ABORTED and "boom" in traj.reason
    summary = summarise([traj], resamples=10)
    assert summary["overall"]["accuracy"]["mean"] == 0.0
    assert summary["terminals"] == {"aborted": 1}


def test_load_cases_from_an_import_string() -> None:
    cases = load_cases("cases.bank:builtin", {"n": 6, "seed": 2}, limit=4)
    assert [c.id for c in cases] == [f"syn-{i:06d}" for i in range(4)]
    assert load_cases("cases.bank:builtin", [3]) == builtin(3)
    with pytest.raises(SystemExit):
        load_cases("cases.catalogue:default_catalogue")  # not a list of cases


# --- the CLI end to end ---------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "--agents",
            "random,heuristic",
            "--cases",
            "40",
            "--seed",
            "1",
            "--budgets",
            "0,150",
            "--resamples",
            "1000",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "| heuristic | 40 |" in table and "Per specialty" in table and "Budget sweep" in table
    png = out / "accuracy_vs_cost.png"
    assert png.exists() and png.stat().st_size > 5_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.md").read_text() == table
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["n_cases"] == 40 and results["config"]["resamples"] == 1000
    agents = results["agents"]
    assert set(agents) == {"random", "heuristic"}
    for res in agents.values():
        overall = res["overall"]
        assert overall["n"] == 40
        for metric in ("accuracy", "exam_precision", "exam_recall", "exam_f1", "turns", "cost"):
            s = overall[metric]
            assert s["low"] <= s["mean"] <= s["high"], metric
        per = res["per_specialty"]
        assert len(per) >= 5 and sum(s["n"] for s in per.values()) == 40
        assert all("accuracy" in s and "exam_f1" in s for s in per.values())
    h, r = agents["heuristic"]["overall"], agents["random"]["overall"]
    assert h["accuracy"]["mean"] > r["accuracy"]["mean"] + 0.5
    assert h["accuracy"]["low"] > r["accuracy"]["high"]  # intervals apart
    assert h["exam_f1"]["mean"] > r["exam_f1"]["mean"] + 0.3
    # the sweep: one point per budget per agent; the unlimited point reproduces the main run
    sweep = results["sweep"]
    assert [p["budget"] for p in sweep["heuristic"]] == [0.0, 150.0]
    assert sweep["heuristic"][0]["accuracy"] == h["accuracy"]
    assert sweep["random"][0]["exam_f1"] == r["exam_f1"]
    assert sweep["heuristic"][1]["cost"]["mean"] <= 150.0


def test_cli_cases_from_and_errors(tmp_path) -> None:
    out = tmp_path / "e2"
    assert (
        main(
            [
                "--agents",
                "async=tests.test_eval_agents:AsyncHeuristic",
                "--cases-from",
                "cases.bank:builtin",
                "--cases-args",
                '{"n": 5, "seed": 4}',
                "--out",
                str(out),
                "--no-plot",
                "--quiet",
                "--resamples",
                "50",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["n_cases"] == 5 and results["config"]["cases"] == "cases.bank:builtin"
    assert results["agents"]["async"]["overall"]["accuracy"]["mean"] >= 0.8  # a coroutine handler
    assert not os.path.exists(out / "accuracy_vs_cost.png")
    with pytest.raises(SystemExit):
        main(["--agents", "nobody", "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit):
        main(["--cases-args", "{not json", "--cases-from", "cases.bank:builtin", "--out", str(out)])
