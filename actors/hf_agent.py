"""The `hf` agent (service "agent"): the tiny policy of `actors.lm`, batched across episodes.

Requests queue up; the batch loop (`run()`, started by the worker after `start()`) takes up to
`max_batch` of them, waiting at most `batch_wait_s` after the first, and generates them together
in a worker thread so the worker's socket keeps flowing. Each reply carries the action text (the
scheduler parses it with the native dialect), the prompt and completion token ids, their
logprobs and the policy version that generated them. Sampling is seeded per (seed, episode,
turn), so a run is reproducible for fixed weights whatever the batching.

Weights: `on_weights` fetches a published version from the learner's weight server, unpacks
(checksums verified) and stages it; it is applied between batches, whole or not at all. A fetch
or a payload that fails leaves the served version unchanged. Once a version is loaded into the
model its blob is kept as the next fetch's buffer (`WeightClient.fetch(into=)`): touching a fresh
blob's pages costs about as much CPU as hashing it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable

import msgspec
import structlog
import trio

from actors.lm import (
    Policy,
    PolicyConfig,
    build_policy,
    generate,
    load_tensors,
    request_prompt,
    state_tensors,
)
from engine.actor import Actor, ActorError, handles
from protocols import ErrorCode, WeightsAvailable
from protocols.arrays import pack_floats, pack_ids
from protocols.messages import ActReply, ActRequest, WeightManifest

__all__ = ["HFAgent", "HFAgentConfig", "write_checkpoint"]

log = structlog.get_logger("actors.hf_agent")

Fetch = Callable[[WeightsAvailable], Awaitable[tuple[WeightManifest, dict[str, memoryview]]]]


class HFAgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policy: PolicyConfig = PolicyConfig()
    max_batch: int = 64
    batch_wait_s: float = 0.005  # after the first request of a batch, wait this long for more
    temperature: float = 1.0  # 0: greedy, for evaluation (a learner needs the agents to sample)
    threads: int = 1  # torch intra-op threads
    seed: int = 0  # sampling seed, mixed with the episode id and turn
    checkpoint: str = ""  # optional weights to start from: a file of `engine.weights.pack` output
    fetch_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.threads < 1:
            raise ValueError("max_batch and threads must be >= 1")
        if self.batch_wait_s < 0 or self.temperature < 0 or self.fetch_timeout_s <= 0:
            raise ValueError("batch_wait_s and temperature must be >= 0; fetch_timeout_s > 0")


def write_checkpoint(
    path: str, version: int, tensors: list[tuple[str, str, list[int], bytes]]
) -> None:
    """Save weights for `HFAgentConfig.checkpoint`: msgpack of `[manifest, blob]`, the two values
    `engine.weights.pack(version, tensors)` returns (`tensors` from `actors.lm.state_tensors`)."""
    from engine.weights import pack  # type: ignore[import-not-found,unused-ignore]

    manifest, blob = pack(version, tensors)
    with open(path, "wb") as f:
        f.write(msgspec.msgpack.encode([manifest, blob]))


def sample_seed(seed: int, episode_id: str, turn: int) -> int:
    digest = hashlib.sha256(f"hf-agent:{seed}:{episode_id}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _Pending:
    __slots__ = ("request", "done", "reply", "error")

    def __init__(self, request: ActRequest) -> None:
        self.request = request
        self.done = trio.Event()
        self.reply: ActReply | None = None
        self.error: BaseException | None = None


async def _fetch_from_server(
    msg: WeightsAvailable, timeout_s: float, into: bytearray | None = None
) -> tuple[WeightManifest, dict[str, memoryview]]:
    from engine.weights import WeightClient, unpack  # type: ignore[import-not-found,unused-ignore]

    client = WeightClient(msg.endpoint, timeout_s=timeout_s)
    manifest, blob = await client.fetch(msg.version, into=into)
    return manifest, unpack(manifest, blob, verify=False)  # the fetch verified every tensor


def _blob_of(named: dict[str, memoryview]) -> bytearray | None:
    """The buffer a fetched version's views point into, to receive the next version into."""
    for view in named.values():
        return view.obj if isinstance(view.obj, bytearray) else None
    return None


class HFAgent(Actor):
    service = "agent"
    Config = HFAgentConfig

    def __init__(self, config: HFAgentConfig | None = None, *, fetch: Fetch | None = None) -> None:
        super().__init__(config or HFAgentConfig())
        self.policy: Policy | None = None
        self.batches = 0  # batches generated
        self.served = 0  # requests answered
        self._version = 0
        # The weight server the served version came from. A notice from another one is a new
        # learner process (restarted from its checkpoint), whose versions count again from there:
        # it replaces the served weights even with a lower version.
        self._source = ""
        self._staged: tuple[int, WeightManifest, dict[str, memoryview], str] | None = None
        # The blob of a version already loaded into the model (or dropped unloaded): no view of
        # it is read again, so the next default fetch receives into it. Taken by one fetch at a
        # time; a failed fetch leaves it garbage and it is not returned.
        self._spare: bytearray | None = None
        self._fetch = fetch or self._fetch_into_spare
        self._send, self._receive = trio.open_memory_channel[_Pending](math.inf)
        self._model_lock = trio.Lock()  # held while the model is read (generation) or written

    @property
    def policy_version(self) -> int:
        return self._version

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg: HFAgentConfig = self.config
        import torch

        torch.set_num_threads(cfg.threads)
        self.policy = await trio.to_thread.run_sync(build_policy, cfg.policy)
        if cfg.checkpoint:
            await trio.to_thread.run_sync(self._load_checkpoint, cfg.checkpoint)
        log.info(
            "hf agent ready",
            actions=len(self.policy.grammar),
            vocab=self.policy.grammar.vocab,
            version=self._version,
        )

    def _load_checkpoint(self, path: str) -> None:
        """See `write_checkpoint` for the format; the checkpoint's version becomes ours."""
        from engine.weights import unpack  # type: ignore[import-not-found,unused-ignore]

        with open(path, "rb") as f:
            manifest, blob = msgspec.msgpack.decode(f.read(), type=tuple[WeightManifest, bytes])
        assert self.policy is not None
        load_tensors(self.policy.model, unpack(manifest, blob), manifest)
        self._version = manifest.version

    async def run(self) -> None:
        """The batch loop: gather, apply staged weights, generate in a thread, answer."""
        cfg: HFAgentConfig = self.config
        while True:
            first = await self._receive.receive()
            batch = [first]
            with trio.move_on_after(cfg.batch_wait_s):
                while len(batch) < cfg.max_batch:
                    batch.append(await self._receive.receive())
            while len(batch) < cfg.max_batch:  # whatever else is already queued
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._apply_staged()
            try:
                async with self._model_lock:
                    replies = await trio.to_thread.run_sync(
                        self._generate, [p.request for p in batch]
                    )
            except Exception as exc:  # noqa: BLE001 - every waiter learns of the failure
                log.exception("generation failed", batch=len(batch))
                for p in batch:
                    p.error = exc
                    p.done.set()
                continue
            self.batches += 1
            for p, reply in zip(batch, replies, strict=True):
                p.reply = reply
                p.done.set()

    # --- serving --------------------------------------------------------------------------------

    @handles(ActRequest)
    async def act(self, request: ActRequest) -> ActReply:
        if request.dialect != "native":
            raise ActorError(
                ErrorCode.BAD_REQUEST,
                f"the hf agent speaks only the 'native' dialect, not {request.dialect!r} "
                "(set the episode rules' dialect to 'native')",
            )
        if self.policy is None:
            raise ActorError(ErrorCode.SHUTTING_DOWN, "the hf agent has not started")
        pending = _Pending(request)
        self._send.send_nowait(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        self.served += 1
        return pending.reply

    def _generate(self, requests: list[ActRequest]) -> list[ActReply]:
        cfg: HFAgentConfig = self.config
        policy = self.policy
        assert policy is not None
        version = self._version
        prompts = [request_prompt(policy, r) for r in requests]
        seeds = [sample_seed(cfg.seed, r.episode_id, r.turn or len(r.steps)) for r in requests]
        outs = generate(policy, prompts, temperature=cfg.temperature, seeds=seeds)
        replies = []
        for prompt, (tokens, logprobs) in zip(prompts, outs, strict=True):
            replies.append(
                ActReply(
                    text=policy.grammar.action_of(tokens),
                    action=None,
                    prompt_ids=pack_ids(prompt),
                    token_ids=pack_ids(tokens),
                    logprobs=pack_floats(logprobs),
                    policy_version=version,
                )
            )
        return replies

    # --- weights --------------------------------------------------------------------------------

    async def on_weights(self, msg: WeightsAvailable) -> None:
        newest = max(self._version, self._staged[0] if self._staged else self._version)
        restarted = bool(self._source) and msg.endpoint != self._source
        if msg.version <= newest and not restarted:
            log.debug("weights notice ignored", version=msg.version, newest=newest)
            return
        try:
            with trio.fail_after(self.config.fetch_timeout_s):
                manifest, named = await self._fetch(msg)
        except Exception as exc:  # noqa: BLE001 - a bad fetch must not take the agent down
            log.warning("weight fetch failed", version=msg.version, error=repr(exc))
            return
        if manifest.version != msg.version:
            log.warning(
                "weight fetch returned another version", want=msg.version, got=manifest.version
            )
            return
        current = self._staged[0] if self._staged else self._version
        if manifest.version > current or restarted:
            if self._staged is not None:
                self._recycle(self._staged[2])  # superseded before it was loaded
            self._staged = (manifest.version, manifest, named, msg.endpoint)
            log.info("weights staged", version=manifest.version)
        else:
            self._recycle(named)
        # apply now if the model is free (else right after the batch being generated)
        await self._apply_staged()

    async def _fetch_into_spare(
        self, msg: WeightsAvailable
    ) -> tuple[WeightManifest, dict[str, memoryview]]:
        spare, self._spare = self._spare, None
        return await _fetch_from_server(msg, self.config.fetch_timeout_s, spare)

    def _recycle(self, named: dict[str, memoryview]) -> None:
        blob = _blob_of(named)
        if blob is not None:
            self._spare = blob

    async def _apply_staged(self) -> None:
        """Load the staged version, if any, between batches (under the model lock)."""
        async with self._model_lock:
            staged, self._staged = self._staged, None
            if staged is None or self.policy is None:
                return
            version, manifest, named, source = staged
            try:
                if version <= self._version and (source == self._source or not self._source):
                    return
                await trio.to_thread.run_sync(load_tensors, self.policy.model, named, manifest)
            except ValueError as exc:
                log.warning(
                    "weights rejected; keeping the current version",
                    version=version,
                    current=self._version,
                    error=str(exc),
                )
                return
            finally:
                self._recycle(named)  # loaded (copied into the model) or dropped
            self._version = version
            self._source = source
            log.info("weights applied", version=version, source=source)

    def weights(self) -> list[tuple[str, str, list[int], bytes]]:
        """The served weights as `engine.weights.pack` takes them (for tests and checkpoints)."""
        assert self.policy is not None
        return state_tensors(self.policy.model)
