"""A small client for OpenAI-compatible endpoints (`vllm serve`, hosted APIs): chat and completions.

Used by the LLM backends of the Patient, Examiner, Agent and Judge. httpx is imported lazily so
that the record backends need nothing beyond the core. Every call has a timeout and failures
raise `LLMError` with the endpoint and the reason, which the worker turns into an `Error` reply.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec


class LLMError(RuntimeError):
    """The endpoint could not be reached or answered something unusable."""


class EndpointConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = ""  # name of the environment variable holding the key, if any
    timeout_s: float = 60.0
    max_tokens: int = 512
    temperature: float = 0.0
    stop: list[str] = []


class Completion(msgspec.Struct, frozen=True):
    text: str
    token_ids: list[int] = []
    logprobs: list[float] = []  # per generated token, when the endpoint returns them
    finish_reason: str = ""


class OpenAIEndpoint:
    """One endpoint; `async with` it or call `aclose()` to release connections."""

    def __init__(self, config: EndpointConfig) -> None:
        import httpx

        headers = {}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise LLMError(f"environment variable {config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"), headers=headers, timeout=config.timeout_s
        )

    async def chat(
        self, messages: list[dict[str, str]], *, logprobs: bool = False, **extra: Any
    ) -> Completion:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            **extra,
        }
        if self.config.stop:
            body["stop"] = self.config.stop
        if logprobs:
            body["logprobs"] = True
        data = await self._post("/chat/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise LLMError(
                f"{self.config.base_url}: unexpected chat reply {str(data)[:200]}"
            ) from None
        lps: list[float] = []
        content = ((choice.get("logprobs") or {}).get("content")) or []
        for item in content:
            if isinstance(item, dict) and isinstance(item.get("logprob"), int | float):
                lps.append(float(item["logprob"]))
        return Completion(text, [], lps, choice.get("finish_reason") or "")

    async def complete(self, prompt: str, *, logprobs: bool = False, **extra: Any) -> Completion:
        body: dict[str, Any] = {
            "model": self.config.model,
            "prompt": prompt,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            **extra,
        }
        if self.config.stop:
            body["stop"] = self.config.stop
        if logprobs:
            body["logprobs"] = 1
        data = await self._post("/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["text"] or ""
        except (KeyError, IndexError, TypeError):
            raise LLMError(
                f"{self.config.base_url}: unexpected completion {str(data)[:200]}"
            ) from None
        lp = choice.get("logprobs") or {}
        lps = [float(x) for x in (lp.get("token_logprobs") or []) if isinstance(x, int | float)]
        return Completion(text, [], lps, choice.get("finish_reason") or "")

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise LLMError(f"{self.config.base_url}{path}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise LLMError(
                f"{self.config.base_url}{path}: HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            data = response.json()
        except ValueError:
            raise LLMError(f"{self.config.base_url}{path}: reply is not JSON") from None
        if not isinstance(data, dict):
            raise LLMError(f"{self.config.base_url}{path}: reply is not a JSON object")
        return data

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> OpenAIEndpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class UsesEndpoint:
    """Mixin for actors whose config has `endpoint: EndpointConfig`: one client, opened on first
    use (so a worker starts without reaching the endpoint) and closed with the actor."""

    config: Any
    _endpoint: OpenAIEndpoint | None = None

    @property
    def endpoint(self) -> OpenAIEndpoint:
        if self._endpoint is None:
            self._endpoint = OpenAIEndpoint(self.config.endpoint)
        return self._endpoint

    async def close(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.aclose()
            self._endpoint = None
