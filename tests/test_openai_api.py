"""The OpenAI-compatible client against a real HTTP server on loopback."""

from __future__ import annotations

import pytest
import trio

from actors.openai_api import EndpointConfig, LLMError, OpenAIEndpoint
from tests.fake_openai import serve_fake_openai


async def test_chat_completion_and_errors() -> None:
    seen: list[str] = []

    def reply(path: str, body: dict) -> str:
        seen.append(path)
        if body.get("model") == "broken":
            raise RuntimeError("model exploded")
        if "messages" in body:
            return "chat: " + body["messages"][-1]["content"]
        return "completion: " + body["prompt"]

    async with trio.open_nursery() as nursery:
        url = await serve_fake_openai(nursery, reply)
        async with OpenAIEndpoint(EndpointConfig(url, "m")) as ep:
            c = await ep.chat([{"role": "user", "content": "hello"}])
            assert c.text == "chat: hello"
            c = await ep.complete("abc")
            assert c.text == "completion: abc"
        async with OpenAIEndpoint(EndpointConfig(url, "broken")) as ep:
            with pytest.raises(LLMError, match="HTTP 500.*model exploded"):
                await ep.chat([{"role": "user", "content": "x"}])
        async with OpenAIEndpoint(EndpointConfig("http://127.0.0.1:9/v1", "m", timeout_s=2)) as ep:
            with pytest.raises(LLMError, match="127.0.0.1:9"):
                await ep.complete("x")
        nursery.cancel_scope.cancel()
    assert seen == ["/v1/chat/completions", "/v1/completions", "/v1/chat/completions"]
