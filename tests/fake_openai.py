"""A fake OpenAI-compatible server on loopback for tests: real HTTP, scripted answers.

`serve_fake_openai(nursery, reply)` starts it and returns its base URL; `reply(path, body)` returns
the text to answer (chat or completion), or an `Answer` to give per-token logprobs too (in OpenAI's
formats: chat `choices[0].logprobs.content[i].logprob`, completions `logprobs.token_logprobs`), or
raises to make the server answer HTTP 500.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass(frozen=True)
class Answer:
    text: str
    logprobs: list[float] = field(default_factory=list)  # one per token; the tokens are made up


Reply = Callable[[str, dict[str, Any]], "str | Answer"]


async def serve_fake_openai(nursery: trio.Nursery, reply: Reply) -> str:
    listeners = await nursery.start(
        lambda task_status: trio.serve_tcp(
            lambda s: _handle(s, reply), 0, host="127.0.0.1", task_status=task_status
        )
    )
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def _handle(stream: trio.SocketStream, reply: Reply) -> None:
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            body, buf = json.loads(buf[:length] or b"{}"), buf[length:]
            try:
                answer = reply(path, body)
                if isinstance(answer, str):
                    answer = Answer(answer)
                status = "200 OK"
                choice: dict[str, Any] = {"finish_reason": "stop"}
                if path.endswith("/chat/completions"):
                    choice["message"] = {"role": "assistant", "content": answer.text}
                    if answer.logprobs:
                        choice["logprobs"] = {
                            "content": [
                                {"token": f"t{i}", "logprob": lp, "bytes": None, "top_logprobs": []}
                                for i, lp in enumerate(answer.logprobs)
                            ]
                        }
                else:
                    choice["text"] = answer.text
                    if answer.logprobs:
                        choice["logprobs"] = {"token_logprobs": answer.logprobs}
                payload = {"choices": [choice]}
            except Exception as exc:  # noqa: BLE001 - scripted failure
                status, payload = "500 Internal Server Error", {"error": str(exc)}
            data = json.dumps(payload).encode()
            await stream.send_all(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
