"""Text dialects: render an episode as text for an LLM and parse its replies back into actions.

    d = get_dialect("native")
    messages = d.chat(intro, steps)      # OpenAI-style chat messages
    action = d.parse(model_output)       # an Action, or FormatFeedback; never raises

`native` is dxsim's tagged format, `diaggym` DiagGym / DiagAgent's fixed phrases, `agentclinic`
AgentClinic's `REQUEST TEST:` / `DIAGNOSIS READY:` dialogue. Imports only the standard library and
`protocols.messages`.
"""

from __future__ import annotations

from protocols.dialects._agentclinic import AgentClinicDialect
from protocols.dialects._base import Dialect, normalize_action
from protocols.dialects._diaggym import DiagGymDialect
from protocols.dialects._native import NativeDialect

__all__ = [
    "DIALECTS",
    "AgentClinicDialect",
    "DiagGymDialect",
    "Dialect",
    "NativeDialect",
    "UnknownDialect",
    "get_dialect",
    "normalize_action",
]

_REGISTRY: dict[str, Dialect] = {
    d.name: d for d in (NativeDialect(), DiagGymDialect(), AgentClinicDialect())
}

DIALECTS: tuple[str, ...] = tuple(_REGISTRY)
"""The names `get_dialect` knows."""


class UnknownDialect(KeyError):
    """`get_dialect` was given a name no dialect has."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name
        self.message = f"unknown dialect {name!r}; known dialects: {', '.join(DIALECTS)}"

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return self.message


def get_dialect(name: str) -> Dialect:
    """The dialect called `name` (one instance per name, stateless and shared)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownDialect(name) from None
