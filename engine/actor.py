"""Actor base: a class whose typed handlers serve one service's requests.

An actor is stateless between requests (caches aside), so any worker of a service can serve any
request. Handlers are marked with `@handles(RequestType)`; they may be plain functions (run inline,
the fast path for cheap actors) or coroutines (run as trio tasks). A handler raises `ActorError`
for a request it refuses; anything else it raises becomes a `WORKER_FAILED` error reply.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgspec

from protocols import ErrorCode, WeightsAvailable

F = TypeVar("F", bound=Callable[..., Any])


class ActorError(Exception):
    """A handler's refusal, sent back to the caller as an `Error` with this code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConfigError(ValueError):
    """A component's configuration has a wrong key or type; the message names it."""


def handles(*request_types: type) -> Callable[[F], F]:
    """Mark a method as the handler of these request types."""

    def mark(fn: F) -> F:
        fn.__dxsim_handles__ = request_types  # type: ignore[attr-defined]
        return fn

    return mark


class Actor:
    """Subclass, set `service`, optionally a `Config` Struct, and write `@handles` methods."""

    service: ClassVar[str] = ""
    Config: ClassVar[type[msgspec.Struct] | None] = None

    def __init__(self, config: Any = None) -> None:
        self.config = config

    @classmethod
    def from_config(cls, raw: dict[str, Any] | None) -> Actor:
        """Build from a plain dict (a spec's table); a wrong key is a `ConfigError` naming it."""
        if cls.Config is None:
            if raw:
                raise ConfigError(f"{cls.__name__} takes no configuration, got keys {sorted(raw)}")
            return cls()
        return cls(convert_config(cls.Config, raw or {}, cls.__name__))

    def handlers(self) -> dict[type, Callable[[Any], Any]]:
        table: dict[type, Callable[[Any], Any]] = {}
        for name in dir(type(self)):
            fn = getattr(type(self), name, None)
            for t in getattr(fn, "__dxsim_handles__", ()):
                table[t] = getattr(self, name)
        return table

    @property
    def policy_version(self) -> int:
        """Agents override: the weight version they currently serve (-1: not a policy)."""
        return -1

    async def start(self) -> None:
        """Called once in the worker before it says Ready (load models, build indices)."""

    async def run(self) -> None:
        """Background work for the worker's lifetime (a batching loop, say); cancelled on stop.

        Started in the worker's nursery right after `start()`; returning early is fine."""

    async def on_weights(self, msg: WeightsAvailable) -> None:
        """A learner published a new weight version (agents fetch and apply it; others ignore).

        Run as its own task in the worker's nursery when the hub forwards the notice."""

    async def close(self) -> None:
        """Called once when the worker stops."""


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


T = TypeVar("T")


def convert_config(kind: type[T], raw: dict[str, Any], where: str) -> T:
    """Decode a dict into a config Struct (declare it `forbid_unknown_fields` so typos fail)."""
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
