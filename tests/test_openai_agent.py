"""The `openai` agent against a real HTTP server on loopback: prompts in the episode's dialect, raw
replies the scheduler parses, logprobs kept only when the endpoint gives them, endpoint failures as
actor errors, and whole episodes through a hub worker and the scheduler."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import zmq

from actors.openai_agent import OpenAIAgent
from engine.actor import ActorError, ConfigError
from engine.client import connect
from engine.episode import Rules
from engine.hub import Hub
from engine.scheduler import Scheduler
from engine.worker import serve
from protocols import (
    ActReply,
    ActRequest,
    AskPatient,
    Diagnose,
    ErrorCode,
    FormatFeedback,
    Intro,
    OrderExam,
    PatientAnswer,
    Published,
    Step,
    Terminal,
    decode,
    encode,
)
from protocols.arrays import unpack_floats
from protocols.dialects import get_dialect
from tests.fake_openai import Answer, serve_fake_openai
from tests.fakes import answer, tiny_case

INTRO = Intro(age=58, sex="male", chief_complaint="cough and fever", budget=500.0, max_turns=6)
STEPS = [Step("<ask>Any fever?</ask>", AskPatient("Any fever?"), PatientAnswer("Yes, 39 C."))]


def request(dialect: str = "native", steps: list[Step] = STEPS) -> ActRequest:
    return ActRequest("ep-1", INTRO, steps, dialect=dialect, turn=len(steps))


def agent(url: str, **config: Any) -> OpenAIAgent:
    built = OpenAIAgent.from_config({"endpoint": {"base_url": url, "model": "api-m"}, **config})
    assert isinstance(built, OpenAIAgent)
    return built


async def _ask(
    answers: list[str | Answer | Exception], requests: list[ActRequest], **config: Any
) -> tuple[list[ActReply | ActorError], list[dict[str, Any]]]:
    """Serve scripted answers, ask the agent once per request; replies (or errors) and bodies."""
    seen: list[dict[str, Any]] = []

    def reply(path: str, body: dict[str, Any]) -> str | Answer:
        assert path == "/v1/chat/completions"
        seen.append(body)
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    out: list[ActReply | ActorError] = []
    async with trio.open_nursery() as nursery:
        a = agent(await serve_fake_openai(nursery, reply), **config)
        for r in requests:
            try:
                out.append(await a.act(r))
            except ActorError as exc:
                out.append(exc)
        await a.close()
        nursery.cancel_scope.cancel()
    return out, seen


@pytest.mark.parametrize(
    ("dialect", "text", "action"),
    [
        (
            "native",
            "I'll image the chest. <exam>chest x-ray; CBC</exam>",
            OrderExam(["chest x-ray", "CBC"]),
        ),
        ("native", "<diagnosis>Pneumonia</diagnosis>", Diagnose("Pneumonia")),
        ("agentclinic", "DIAGNOSIS READY: Pneumonia", Diagnose("Pneumonia")),
        ("diaggym", "Question: Do you smoke?", AskPatient("Do you smoke?")),
    ],
)
async def test_the_reply_is_the_models_text_and_parses_in_the_episodes_dialect(
    dialect: str, text: str, action: Any
) -> None:
    (reply,), (body,) = await _ask([text], [request(dialect)])
    assert isinstance(reply, ActReply)
    assert reply.text == text and reply.action is None  # the scheduler parses it
    assert reply.token_ids == b"" and reply.logprobs == b"" and reply.policy_version == 0
    assert get_dialect(dialect).parse(reply.text) == action
    # the model saw exactly the dialect's rendering of the episode so far
    assert body["messages"] == get_dialect(dialect).chat(INTRO, STEPS)
    assert body["model"] == "api-m" and "logprobs" not in body
    assert decode(encode(reply)) == reply


async def test_unparseable_reply_is_passed_on_for_the_episode_to_count() -> None:
    (reply,), _ = await _ask(["I think it's probably pneumonia"], [request()])
    assert isinstance(reply, ActReply) and reply.action is None
    assert isinstance(get_dialect("native").parse(reply.text), FormatFeedback)


async def test_logprobs_kept_when_given_and_empty_when_not() -> None:
    lps = [-0.25, -1.5, -0.0078125]
    replies, bodies = await _ask(
        [Answer("<ask>Cough?</ask>", lps), "<ask>Cough?</ask>"],
        [request(), request()],
        logprobs=True,
        temperature=0.7,
        max_tokens=64,
    )
    given, missing = replies
    assert isinstance(given, ActReply) and unpack_floats(given.logprobs) == lps
    assert given.token_ids == b""  # API token ids are not available
    assert isinstance(missing, ActReply) and missing.logprobs == b""
    for body in bodies:
        assert body["logprobs"] is True
        assert body["temperature"] == 0.7 and body["max_tokens"] == 64
    # not asked for: not requested, and the endpoint's own settings are used
    (plain,), (body,) = await _ask([Answer("<ask>Cough?</ask>")], [request()])
    assert isinstance(plain, ActReply) and plain.logprobs == b""
    assert "logprobs" not in body and body["temperature"] == 0.0 and body["max_tokens"] == 512


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_endpoint_failures_are_actor_errors() -> None:
    (err,), _ = await _ask([RuntimeError("model exploded")], [request()])
    assert isinstance(err, ActorError) and err.code == ErrorCode.WORKER_FAILED
    assert "openai agent" in err.message and "HTTP 500" in err.message
    a = OpenAIAgent.from_config(
        {"endpoint": {"base_url": f"http://127.0.0.1:{_closed_port()}/v1", "model": "m"}}
    )
    with pytest.raises(ActorError) as info:
        await a.act(request())
    assert info.value.code == ErrorCode.WORKER_FAILED
    assert "openai agent" in info.value.message and "127.0.0.1" in info.value.message
    await a.close()


async def test_unknown_dialect_is_a_bad_request() -> None:
    (err,), seen = await _ask(["<ask>x</ask>"], [request("klingon")])
    assert isinstance(err, ActorError) and err.code == ErrorCode.BAD_REQUEST
    assert "klingon" in err.message and seen == []  # the endpoint was never called


def test_config() -> None:
    a = agent("http://127.0.0.1:9/v1", logprobs=True)
    assert a.config.logprobs and a.config.temperature is None and OpenAIAgent.service == "agent"
    assert set(a.handlers()) == {ActRequest}
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    for raw in (
        {},
        {"endpoint": {"model": "m"}},
        {"endpoint": endpoint, "temprature": 0.5},
        {"endpoint": endpoint, "temperature": -1},
        {"endpoint": endpoint, "max_tokens": 0},
    ):
        with pytest.raises(ConfigError):
            OpenAIAgent.from_config(raw)


# --- whole episodes: the agent in a hub worker, driven by the scheduler --------------------------


class HubAndFakes:
    """Agent requests go through a real hub to the agent's worker; the rest answer at once."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.published: list[Any] = []

    async def request(self, service: str, body: Any, *, timeout: float = 10.0) -> Any:
        if service == "agent":
            return await self.client.request(service, body, timeout=timeout)
        await trio.sleep(0)
        if service == "broker":
            self.published.append(body.trajectory)
            return Published(body.trajectory.id)
        return answer(service, body)


async def test_episodes_end_to_end_through_the_scheduler() -> None:
    def model(path: str, body: dict[str, Any]) -> str | Answer:
        messages = body["messages"]
        case = messages[1]["content"]
        turn = sum(m["role"] == "assistant" for m in messages)
        if "female" in case:  # this episode's endpoint is broken: every attempt fails
            raise RuntimeError("model exploded")
        script = [
            "<think>fever?</think><ask>Any fever?</ask>",
            "hmm, not sure",  # a format error: counted, and the episode goes on
            "<exam>chest x-ray</exam>",
            "<diagnosis>pneumonia</diagnosis>",
        ]
        return Answer(script[turn], [-0.5] * (turn + 1))

    async with trio.open_nursery() as nursery:
        url = await serve_fake_openai(nursery, model)
        hub = Hub(["tcp://127.0.0.1:*"], ctx=zmq.Context())
        (endpoint,) = await nursery.start(hub.run)
        llm = agent(url, logprobs=True)
        await nursery.start(lambda **kw: serve(llm, endpoint, ctx=hub.ctx, **kw))
        async with connect(endpoint, ctx=hub.ctx) as client:
            transport = HubAndFakes(client)
            rules = Rules(max_turns=6, request_timeout_s=10.0, attempts=2)
            s = Scheduler(transport, [tiny_case(0), tiny_case(1)], rules, concurrency=2)
            with trio.fail_after(60):
                await s.run(4)
        nursery.cancel_scope.cancel()

    by_case: dict[str, list[Any]] = {}
    for t in transport.published:
        by_case.setdefault(t.case_id, []).append(t)
    assert sorted(len(v) for v in by_case.values()) == [2, 2]
    for t in by_case["case-0"]:  # male: the scripted model diagnoses at its fourth turn
        assert t.terminal is Terminal.DIAGNOSED and t.verdict is not None
        assert t.verdict.correct
        assert [type(turn.action) for turn in t.turns] == [
            AskPatient,
            type(None),
            OrderExam,
            Diagnose,
        ]
        assert t.turns[1].text == "hmm, not sure"
        assert isinstance(t.turns[1].observation, FormatFeedback)
        assert [unpack_floats(turn.logprobs) for turn in t.turns] == [
            [-0.5] * n for n in (1, 2, 3, 4)
        ]
        assert all(turn.token_ids == b"" and turn.policy_version == 0 for turn in t.turns)
    for t in by_case["case-1"]:  # female: the endpoint fails, the episode is aborted, not lost
        assert t.terminal is Terminal.ABORTED and t.turns == []
        assert "openai agent" in t.reason and "HTTP 500" in t.reason
    assert s.tally.published == 4 and s.tally.publish_failed == 0
