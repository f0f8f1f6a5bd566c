"""Smoke checks of the benchmarks' workload and baselines: logic only, never timings."""

from __future__ import annotations

import asyncio
import math

import msgspec
import pytest
import trio

from benchmarks.common import (
    Context,
    Row,
    closed_loop_asyncio,
    closed_loop_trio,
    latency_stats,
)
from benchmarks.instant import (
    CALLS_PER_EPISODE,
    EXPECTED_SERVICES,
    bench_case,
    local_call,
    run_episode_logic,
)
from benchmarks.registry import available, register, resolve
from benchmarks.report import BenchmarkRun, compare, markdown, summarize
from protocols import (
    ActRequest,
    Diagnose,
    ExamQuery,
    PatientQuestion,
    ScoreRequest,
    Verdict,
    decode,
    encode,
)


def _recording_call():
    inner = local_call()
    seen: list[tuple[str, object]] = []

    async def call(service, request):
        seen.append((service, request))
        return await inner(service, request)

    return call, seen


def test_episode_makes_the_twelve_expected_calls():
    call, seen = _recording_call()
    verdict = trio.run(run_episode_logic, call)
    assert isinstance(verdict, Verdict)
    assert len(seen) == CALLS_PER_EPISODE == 12
    assert tuple(service for service, _ in seen) == EXPECTED_SERVICES
    kinds = {
        "agent": ActRequest,
        "patient": PatientQuestion,
        "examiner": ExamQuery,
        "judge": ScoreRequest,
    }
    for service, request in seen:
        assert isinstance(request, kinds[service])


def test_episode_requests_carry_the_case_and_the_growing_history():
    call, seen = _recording_call()
    asyncio.run(run_episode_logic(call, episode_id="ep-7"))
    case = bench_case()
    acts = [r for s, r in seen if s == "agent"]
    assert [a.turn for a in acts] == list(range(6))
    assert [len(a.steps) for a in acts] == list(range(6))
    assert all(a.episode_id == "ep-7" for a in acts)
    for _, request in seen:
        if isinstance(request, (PatientQuestion, ExamQuery, ScoreRequest)):
            assert request.case == case
    questions = [r for s, r in seen if s == "patient"]
    assert [len(q.asked) for q in questions] == [0, 1, 2]
    exams = [r for s, r in seen if s == "examiner"]
    assert [e.exam for e in exams] == ["complete blood count"] * 2
    assert [len(e.earlier) for e in exams] == [0, 1]
    score = seen[-1][1]
    assert score.diagnosis == Diagnose("pneumonia")
    assert score.turns == 6 and score.exams == ["complete blood count"] * 2
    assert score.cost == pytest.approx(28.0)


def test_messages_survive_the_wire_and_pickle():
    import pickle

    call, seen = _recording_call()
    trio.run(run_episode_logic, call)
    for _, request in seen:
        assert decode(encode(request)) == request
        assert pickle.loads(pickle.dumps(request)) == request
    size = len(encode(ExamQuery("bench-episode-0000", bench_case(), "complete blood count")))
    assert 900 <= size <= 1400  # the "~1 KB realistic message"


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_closed_loop_drivers_count_a_steady_window(loop):
    call = local_call()

    async def play(i):
        await run_episode_logic(call, episode_id=f"e{i}")

    kwargs = dict(concurrency=8, warmup_s=0.01, measure_s=0.05)
    if loop == "asyncio":
        result = asyncio.run(closed_loop_asyncio(play, **kwargs))
    else:
        result = trio.run(lambda: closed_loop_trio(play, **kwargs))
    assert result.completed > 0 and result.completed % 8 == 0
    assert result.rate > 0 and result.started >= result.completed


def test_latency_stats_percentiles():
    stats = latency_stats([i * 1000 for i in range(1, 101)], seconds=2.0)
    assert stats.count == 100 and stats.rate == 50.0
    assert stats.p50_us == 50.0 and stats.p99_us == 99.0


def test_raw_zmq_roundtrip_tiny():
    from benchmarks.raw_zmq import codec_rate, roundtrip

    stats = roundtrip(20, warmup=5)
    assert stats.count == 20 and stats.rate > 0
    assert 0 < stats.p50_us <= stats.p99_us
    assert codec_rate(100).rate > 0


def test_raw_zmq_pushpull_tiny():
    from benchmarks.raw_zmq import pushpull

    assert pushpull(200, encode=True, warmup=10).completed == 200


def test_registry_and_ratios():
    found = available()
    assert {"raw_zmq", "ray_episodes", "episode_logic"} <= set(found)
    assert callable(resolve(found["raw_zmq"]))
    with pytest.raises(ValueError):
        register("bad", lambda ctx: [])

    def rows(bench, metric, values, unit="x"):
        return [[Row(bench, metric, v, unit)] for v in values]

    runs = [
        BenchmarkRun(
            "ray_episodes", "t", "ok", 1.0, rows("ray_episodes", "episodes_c256", [1, 2, 100])
        ),
        BenchmarkRun("raw_zmq", "t", "ok", 1.0, rows("raw_zmq", "rt_p50", [100.0, 100.0, 100.0])),
    ]
    results = summarize(runs)
    assert results[0].value == 2
    comparisons = {c.subject: c for c in compare(results)}
    assert comparisons["dxsim_episodes.episodes_c256"].status == "n/a"
    runs.append(
        BenchmarkRun(
            "dxsim_episodes", "t", "ok", 1.0, rows("dxsim_episodes", "episodes_c256", [12, 12, 12])
        )
    )
    runs.append(
        BenchmarkRun(
            "dxsim_roundtrip", "t", "ok", 1.0, rows("dxsim_roundtrip", "rt_p50", [300.0] * 3)
        )
    )
    comparisons = {c.subject: c for c in compare(summarize(runs))}
    assert comparisons["dxsim_episodes.episodes_c256"].ratio == pytest.approx(6.0)
    assert comparisons["dxsim_episodes.episodes_c256"].status == "pass"
    assert comparisons["dxsim_roundtrip.rt_p50"].ratio == pytest.approx(3.0)
    assert comparisons["dxsim_roundtrip.rt_p50"].status == "fail"
    assert comparisons["dxsim_episodes.episodes_serial"].status == "n/a"
    assert not math.isnan(results[1].value)


def test_markdown_and_json_report():
    from benchmarks.report import Report

    runs = [BenchmarkRun("raw_zmq", "t", "ok", 1.0, [[Row("raw_zmq", "rt_p50", 80.0, "us")]])]
    results = summarize(runs)
    report = Report("id", "s", "f", True, 1, {"summary": "m"}, runs, results, compare(results))
    text = markdown(report)
    assert "| raw_zmq | rt_p50 | 80 | us |" in text and "n/a" in text
    assert msgspec.json.decode(msgspec.json.encode(report), type=Report) == report


def test_context_resources_live_across_rounds():
    import contextlib

    events = []

    @contextlib.contextmanager
    def resource():
        events.append("enter")
        yield object()
        events.append("exit")

    with Context(quick=True) as ctx:
        assert ctx.resource("r", resource) is ctx.resource("r", resource)
        assert ctx.scale(10, 1) == 1
    assert events == ["enter", "exit"]


@pytest.mark.slow
def test_ray_episode_over_ray_actors():
    pytest.importorskip("ray")
    from benchmarks.ray_episodes import _make_call, ray_session

    with ray_session() as session:
        for wire in ("struct", "msgpack"):
            verdict = asyncio.run(run_episode_logic(_make_call(session, wire)))
            assert isinstance(verdict, Verdict) and verdict.correct
