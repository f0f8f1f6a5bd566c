"""The `openai` agent (service "agent"): an API model behind any OpenAI-compatible chat endpoint.

For evaluating hosted or `vllm serve`d models, not for training: API token ids are not available,
so `ActReply.token_ids` stays empty. Each turn the episode so far is rendered in the episode's
dialect (`protocols.dialects`, `Dialect.chat(intro, steps)`), sent to the endpoint, and the model's
reply is returned as text with no action: the scheduler parses it with the same dialect, so a reply
that does not parse is a format error of the episode, as for any text agent. With `logprobs` the
endpoint is asked for per-token logprobs, returned packed (float32) when it gives them.

The actor is stateless (everything comes from `ActRequest`), so any worker can serve any turn.
An endpoint failure is an `ActorError` (WORKER_FAILED, naming the endpoint): the scheduler retries
the request and aborts the episode with that reason when its attempts run out. An unknown dialect
is BAD_REQUEST, which the scheduler does not retry.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import structlog

from actors.openai_api import EndpointConfig, LLMError, UsesEndpoint
from engine.actor import Actor, ActorError, handles
from protocols import ActReply, ActRequest, ErrorCode
from protocols.arrays import pack_floats
from protocols.dialects import UnknownDialect, get_dialect

__all__ = ["OpenAIAgent", "OpenAIAgentConfig"]

log = structlog.get_logger("actors.openai_agent")


class OpenAIAgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    endpoint: EndpointConfig
    # None: the endpoint's own setting (`endpoint.temperature`, `endpoint.max_tokens`)
    temperature: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    logprobs: bool = False  # ask for per-token logprobs (OpenAI chat `logprobs: true`)


class OpenAIAgent(UsesEndpoint, Actor):
    """Service "agent": one chat completion per turn, the episode rendered in its dialect."""

    service = "agent"
    Config = OpenAIAgentConfig

    def __init__(self, config: OpenAIAgentConfig) -> None:
        super().__init__(config)

    def messages(self, request: ActRequest) -> list[dict[str, str]]:
        """The chat the model sees: the dialect's system prompt, the intro, then every turn."""
        try:
            dialect = get_dialect(request.dialect)
        except UnknownDialect as exc:
            raise ActorError(ErrorCode.BAD_REQUEST, f"openai agent: {exc}") from None
        return dialect.chat(request.intro, request.steps)

    @handles(ActRequest)
    async def act(self, request: ActRequest) -> ActReply:
        cfg: OpenAIAgentConfig = self.config
        extra: dict[str, Any] = {}
        if cfg.temperature is not None:
            extra["temperature"] = cfg.temperature
        if cfg.max_tokens is not None:
            extra["max_tokens"] = cfg.max_tokens
        messages = self.messages(request)
        try:
            reply = await self.endpoint.chat(messages, logprobs=cfg.logprobs, **extra)
        except LLMError as exc:
            raise ActorError(ErrorCode.WORKER_FAILED, f"openai agent: {exc}") from None
        if cfg.logprobs and not reply.logprobs:
            log.debug("agent.no_logprobs", episode_id=request.episode_id, model=cfg.endpoint.model)
        return ActReply(
            text=reply.text,
            action=None,
            logprobs=pack_floats(reply.logprobs) if reply.logprobs else b"",
            policy_version=0,
        )
