"""The `hf` agent served through a real hub and worker: batching, valid native actions with ids
and logprobs, seeded sampling, the dialect check, and weight swaps (applied whole, or not at
all)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
import trio
import zmq

from actors.hf_agent import HFAgent, HFAgentConfig
from actors.lm import build_policy, state_tensors
from cases.bank import builtin
from engine.client import RemoteError, connect
from engine.hub import Hub
from engine.worker import serve
from protocols import ErrorCode, WeightsAvailable
from protocols.arrays import unpack_floats, unpack_ids
from protocols.dialects import get_dialect
from protocols.messages import (
    ActReply,
    ActRequest,
    AskPatient,
    FormatFeedback,
    Intro,
    PatientAnswer,
    Step,
    TensorEntry,
    WeightManifest,
)
from tests.test_lm import TINY

CONFIG = HFAgentConfig(policy=TINY, batch_wait_s=0.05, max_batch=16)


def requests(n: int, *, dialect: str = "native", max_turns: int = 0) -> list[ActRequest]:
    out = []
    for i, case in enumerate(builtin(n, 7)):
        demo = case.profile.demographics
        intro = Intro(
            age=demo.age,
            sex=demo.sex,
            chief_complaint=case.profile.chief_complaint,
            max_turns=max_turns,
        )
        steps = [
            Step(f"<ask>q{k}</ask>", AskPatient(f"q{k}"), PatientAnswer(f"answer {k}"))
            for k in range(i % 3)
        ]
        out.append(ActRequest(f"ep-{i}", intro, steps, dialect=dialect, turn=len(steps)))
    return out


def packed(tensors, version: int) -> tuple[WeightManifest, dict[str, memoryview]]:
    entries, named, offset = [], {}, 0
    for name, dtype, shape, raw in tensors:
        entries.append(
            TensorEntry(name, dtype, shape, offset, len(raw), hashlib.sha256(raw).hexdigest())
        )
        named[name] = memoryview(raw)
        offset += len(raw)
    return WeightManifest(version, entries, 4 << 20, offset), named


class FakeServer:
    """Stands in for `engine.weights.WeightClient(...).fetch` + `unpack`: versions it holds,
    and versions whose fetch fails (as a checksum mismatch would)."""

    def __init__(self) -> None:
        self.versions: dict[int, tuple[WeightManifest, dict[str, memoryview]]] = {}
        self.broken: set[int] = set()
        self.fetches: list[int] = []

    async def fetch(self, msg: WeightsAvailable) -> tuple[WeightManifest, dict[str, memoryview]]:
        self.fetches.append(msg.version)
        await trio.sleep(0)
        if msg.version in self.broken:
            raise ValueError(f"sha256 mismatch in version {msg.version}")
        return self.versions[msg.version]


async def start(nursery: trio.Nursery, agent: HFAgent) -> str:
    hub = Hub(["tcp://127.0.0.1:*"], ctx=zmq.Context())
    endpoints = await nursery.start(hub.run)
    await nursery.start(lambda **kw: serve(agent, endpoints[0], ctx=hub.ctx, **kw))
    return endpoints[0]


async def ask_all(client, reqs: list[ActRequest]) -> list[ActReply]:
    replies: list[ActReply | None] = [None] * len(reqs)

    async def one(i: int) -> None:
        replies[i] = await client.request("agent", reqs[i], timeout=120)

    async with trio.open_nursery() as many:
        for i in range(len(reqs)):
            many.start_soon(one, i)
    assert all(isinstance(r, ActReply) for r in replies)
    return replies  # type: ignore[return-value]


async def test_concurrent_requests_are_batched_into_valid_actions() -> None:
    agent = HFAgent(CONFIG)
    native = get_dialect("native")
    reqs = requests(40)
    async with trio.open_nursery() as nursery:
        ep = await start(nursery, agent)
        async with connect(ep) as client:
            replies = await ask_all(client, reqs)
            assert agent.served == len(reqs)
            assert 1 <= agent.batches < len(reqs)
            assert agent.policy is not None
            for reply in replies:
                assert reply.action is None and reply.policy_version == 0
                action = native.parse(reply.text)
                assert not isinstance(action, FormatFeedback), reply.text
                prompt, tokens = unpack_ids(reply.prompt_ids), unpack_ids(reply.token_ids)
                logprobs = unpack_floats(reply.logprobs)
                assert prompt[-1] == agent.policy.act_id
                assert len(prompt) <= TINY.max_prompt_tokens
                assert len(tokens) == len(logprobs) >= 1
                assert all(lp <= 0 for lp in logprobs)
                assert agent.policy.grammar.action_of(tokens) == reply.text
            # seeded per (episode, turn): the same requests again, batched differently
            again = [await client.request("agent", r, timeout=120) for r in reqs[:5]]
            assert [r.token_ids for r in again] == [r.token_ids for r in replies[:5]]
        nursery.cancel_scope.cancel()


async def test_the_last_turn_is_always_a_diagnosis() -> None:
    """With `max_turns` 3, requests at turn 2 end their prompt with the `<|dx|>` cue and come
    back as diagnoses; earlier turns keep the whole action space."""
    agent = HFAgent(CONFIG)
    reqs = requests(30, max_turns=3)  # turns 0, 1, 2 in turn
    async with trio.open_nursery() as nursery:
        ep = await start(nursery, agent)
        async with connect(ep) as client:
            replies = await ask_all(client, reqs)
        nursery.cancel_scope.cancel()
    assert agent.policy is not None
    kinds = set()
    for req, reply in zip(reqs, replies, strict=True):
        cue = unpack_ids(reply.prompt_ids)[-1]
        if req.turn == 2:
            assert cue == agent.policy.dx_id and reply.text.startswith("<diagnosis>")
        else:
            assert cue == agent.policy.act_id
            kinds.add(reply.text.split(">")[0])
    assert kinds - {"<diagnosis"}  # the open turns did not all diagnose


async def test_other_dialects_are_refused_clearly() -> None:
    async with trio.open_nursery() as nursery:
        ep = await start(nursery, HFAgent(CONFIG))
        async with connect(ep) as client:
            with pytest.raises(RemoteError) as info:
                await client.request("agent", requests(1, dialect="diaggym")[0], timeout=120)
            assert info.value.code is ErrorCode.BAD_REQUEST
            assert "native" in info.value.message and "diaggym" in info.value.message
        nursery.cancel_scope.cancel()


def digest(agent: HFAgent) -> str:
    return hashlib.sha256(b"".join(raw for *_, raw in agent.weights())).hexdigest()


async def test_weight_versions_swap_whole_or_not_at_all() -> None:
    server = FakeServer()
    agent = HFAgent(CONFIG, fetch=server.fetch)
    new = state_tensors(build_policy(msgspec.structs.replace(TINY, seed=1)).model)
    server.versions[1] = packed(new, 1)
    async with trio.open_nursery() as nursery:
        ep = await start(nursery, agent)
        async with connect(ep) as client:
            before = await ask_all(client, requests(4))
            assert {r.policy_version for r in before} == {0}
            v0 = digest(agent)

            await agent.on_weights(WeightsAvailable(1, "tcp://learner"))
            assert agent.policy_version == 1
            assert digest(agent) != v0
            assert [raw for *_, raw in agent.weights()] == [raw for *_, raw in new]
            after = await ask_all(client, requests(4))
            assert {r.policy_version for r in after} == {1}

            # an old or repeated notice is not even fetched
            await agent.on_weights(WeightsAvailable(1, "tcp://learner"))
            await agent.on_weights(WeightsAvailable(0, "tcp://learner"))
            assert server.fetches == [1]

            # a fetch that fails its checksum, and a payload that does not fit the model
            server.broken.add(2)
            await agent.on_weights(WeightsAvailable(2, "tcp://learner"))
            bad = [
                (n, d, [s[0] + 1, *s[1:]], r + bytes(4 * s[1])) if i == 0 else (n, d, s, r)
                for i, (n, d, s, r) in enumerate(new)
            ]
            server.versions[3] = packed(bad, 3)
            await agent.on_weights(WeightsAvailable(3, "tcp://learner"))
            assert agent.policy_version == 1
            assert [raw for *_, raw in agent.weights()] == [raw for *_, raw in new]
            later = await ask_all(client, requests(4))
            assert {r.policy_version for r in later} == {1}
        nursery.cancel_scope.cancel()


def test_config_typos_and_bad_values_are_errors() -> None:
    from engine.actor import ConfigError

    with pytest.raises(ConfigError, match="max_bach"):
        HFAgent.from_config({"max_bach": 3})
    with pytest.raises(ConfigError):
        HFAgent.from_config({"temperature": -1})
    assert HFAgent.from_config({"temperature": 0}).config.temperature == 0  # greedy evaluation
    with pytest.raises(ConfigError, match="layer"):
        HFAgent.from_config({"policy": {"layer": 1}})


async def test_weights_from_a_real_weight_server_and_a_corrupted_version() -> None:
    from engine.weights import WeightServer, pack

    agent = HFAgent(CONFIG)  # the default fetch: engine.weights.WeightClient + unpack
    new = state_tensors(build_policy(msgspec.structs.replace(TINY, seed=2)).model)
    server = WeightServer("tcp://127.0.0.1:*", ctx=zmq.Context())
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(server.run)
        ep = await start(nursery, agent)
        manifest, blob = pack(1, new, chunk_bytes=1 << 16)
        server.publish(manifest, blob)
        await agent.on_weights(WeightsAvailable(1, endpoint))
        assert agent.policy_version == 1
        assert [raw for *_, raw in agent.weights()] == [raw for *_, raw in new]

        manifest, blob = pack(2, state_tensors(build_policy(TINY).model), chunk_bytes=1 << 16)
        tampered = bytearray(blob)
        tampered[len(tampered) // 2] ^= 0xFF  # fails its sha256 on the agent's side
        server.publish(manifest, bytes(tampered))
        await agent.on_weights(WeightsAvailable(2, endpoint))
        assert agent.policy_version == 1
        assert [raw for *_, raw in agent.weights()] == [raw for *_, raw in new]
        async with connect(ep) as client:
            replies = await ask_all(client, requests(3))
            assert {r.policy_version for r in replies} == {1}

        # Once loaded, a version's blob receives the next one (no fresh memory per version); the
        # failed fetch above left its buffer garbage, so v3 came into a fresh one.
        later = [build_policy(msgspec.structs.replace(TINY, seed=s)).model for s in (3, 4)]
        for version, model in enumerate(later, start=3):
            server.publish(*pack(version, state_tensors(model), chunk_bytes=1 << 16))
            before = agent._spare
            await agent.on_weights(WeightsAvailable(version, endpoint))
            assert agent.policy_version == version
            assert [raw for *_, raw in agent.weights()] == [raw for *_, raw in state_tensors(model)]
            assert agent._spare is not None and (version == 3) == (agent._spare is not before)
        nursery.cancel_scope.cancel()


async def test_starts_from_a_checkpoint(tmp_path) -> None:
    from actors.hf_agent import write_checkpoint

    new = state_tensors(build_policy(msgspec.structs.replace(TINY, seed=3)).model)
    path = tmp_path / "weights.msgpack"
    write_checkpoint(str(path), 7, new)
    agent = HFAgent(msgspec.structs.replace(CONFIG, checkpoint=str(path)))
    await agent.start()
    assert agent.policy_version == 7
    assert [raw for *_, raw in agent.weights()] == [raw for *_, raw in new]
    path.write_bytes(path.read_bytes()[:-8])  # truncated: refused, loudly
    with pytest.raises(Exception, match="weights|bytes|truncated|data"):
        await HFAgent(msgspec.structs.replace(CONFIG, checkpoint=str(path))).start()


async def test_a_restarted_learner_replaces_newer_weights_with_its_checkpoint() -> None:
    """A learner restarted from an older checkpoint announces a lower version from a new weight
    server: the agent swaps to it (the newer weights died with the old learner), and from then on
    compares versions within the new server's line."""
    server = FakeServer()
    agent = HFAgent(CONFIG, fetch=server.fetch)
    policies = [
        state_tensors(build_policy(msgspec.structs.replace(TINY, seed=s)).model) for s in (1, 2, 3)
    ]
    server.versions[5] = packed(policies[0], 5)
    server.versions[3] = packed(policies[1], 3)
    server.versions[4] = packed(policies[2], 4)
    async with trio.open_nursery() as nursery:
        await start(nursery, agent)
        await agent.on_weights(WeightsAvailable(5, "tcp://old-learner"))
        assert agent.policy_version == 5
        await agent.on_weights(WeightsAvailable(3, "tcp://old-learner"))  # stale news: ignored
        assert agent.policy_version == 5 and server.fetches == [5]
        await agent.on_weights(WeightsAvailable(3, "tcp://new-learner"))  # the restart
        assert agent.policy_version == 3
        assert [raw for *_, raw in agent.weights()] == [raw for *_, raw in policies[1]]
        await agent.on_weights(WeightsAvailable(4, "tcp://new-learner"))
        assert agent.policy_version == 4
        nursery.cancel_scope.cancel()
