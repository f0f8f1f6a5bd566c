"""Drive an episode from outside the cluster, gym style: `reset()` then `step()` until `done`.

`EnvClient` is blocking (for gym envs and scripts); `AsyncEnvClient` wraps an async `HubClient`
(for trainers that run many episodes at once). Both speak to the scheduler's `env` service.
"""

from __future__ import annotations

from typing import Any

from engine.client import HubClient, SyncHubClient
from protocols import Action, CloseEpisode, EnvObservation, EnvStep, OpenEpisode, ProtocolError

ENV_SERVICE = "env"


def _check(reply: Any) -> EnvObservation:
    if not isinstance(reply, EnvObservation):
        raise ProtocolError(f"env service replied {type(reply).__name__}, expected EnvObservation")
    return reply


def _step_body(episode_id: str, action: Action | str) -> EnvStep:
    if isinstance(action, str):
        return EnvStep(episode_id, None, action)
    return EnvStep(episode_id, action, "")


class EnvClient:
    def __init__(self, endpoint: str, *, timeout: float = 60.0, **kwargs: Any) -> None:
        self.hub = SyncHubClient(endpoint, **kwargs)
        self.timeout = timeout
        self.episode_id = ""

    def reset(self, case_id: str = "", *, dialect: str = "native") -> EnvObservation:
        obs = _check(
            self.hub.request(ENV_SERVICE, OpenEpisode(case_id, dialect), timeout=self.timeout)
        )
        self.episode_id = obs.episode_id
        return obs

    def step(self, action: Action | str) -> EnvObservation:
        """A structured action, or the model's raw text (parsed by the episode's dialect)."""
        body = _step_body(self.episode_id, action)
        return _check(self.hub.request(ENV_SERVICE, body, timeout=self.timeout))

    def close_episode(self) -> EnvObservation:
        return _check(
            self.hub.request(ENV_SERVICE, CloseEpisode(self.episode_id), timeout=self.timeout)
        )

    def close(self) -> None:
        self.hub.close()

    def __enter__(self) -> EnvClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEnvClient:
    """One open episode over a shared async `HubClient` (many may share one client)."""

    def __init__(self, hub: HubClient, *, timeout: float = 60.0) -> None:
        self.hub = hub
        self.timeout = timeout
        self.episode_id = ""

    async def reset(self, case_id: str = "", *, dialect: str = "native") -> EnvObservation:
        reply = await self.hub.request(
            ENV_SERVICE, OpenEpisode(case_id, dialect), timeout=self.timeout
        )
        obs = _check(reply)
        self.episode_id = obs.episode_id
        return obs

    async def step(self, action: Action | str) -> EnvObservation:
        body = _step_body(self.episode_id, action)
        return _check(await self.hub.request(ENV_SERVICE, body, timeout=self.timeout))

    async def close_episode(self) -> EnvObservation:
        reply = await self.hub.request(
            ENV_SERVICE, CloseEpisode(self.episode_id), timeout=self.timeout
        )
        return _check(reply)
