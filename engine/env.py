"""Episodes whose agent lives outside the cluster, served as the `env` service.

A trainer opens an episode (`OpenEpisode`, like gym's `reset`), sends one action or raw text per
turn (`EnvStep`, like `step`) and gets the next observation rendered by the episode's dialect, and
at the end the verdict. The episode itself runs inside the scheduler with the same rules, actors
and publishing as any other; only its agent calls are answered from outside. An episode left idle
longer than `idle_timeout_s` ends aborted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
import trio

from engine.actor import Actor, ActorError, handles
from engine.scheduler import Scheduler
from protocols import (
    ActReply,
    ActRequest,
    CloseEpisode,
    EnvObservation,
    EnvStep,
    ErrorCode,
    Intro,
    OpenEpisode,
    Status,
    StatusQuery,
    Trajectory,
)
from protocols.dialects import get_dialect

log = structlog.get_logger("engine.env")


@dataclass
class _Remote:
    """The outside agent of one episode: observations out, actions in."""

    id: str
    intro: Intro
    events_in: trio.MemoryReceiveChannel[ActRequest | Trajectory]
    events_out: trio.MemorySendChannel[ActRequest | Trajectory]
    actions_in: trio.MemoryReceiveChannel[EnvStep | None]  # None: the client closed it
    actions_out: trio.MemorySendChannel[EnvStep | None]
    idle_timeout_s: float
    last: ActRequest | None = None
    busy: bool = False

    async def act(self, request: ActRequest) -> ActReply:
        await self.events_out.send(request)
        with trio.fail_after(self.idle_timeout_s):
            step = await self.actions_in.receive()
        if step is None:
            raise trio.TooSlowError("closed by the client")
        return ActReply(text=step.text, action=step.action)


class EnvService(Actor):
    service = "env"

    def __init__(
        self, scheduler: Scheduler, nursery: trio.Nursery, *, idle_timeout_s: float = 300.0
    ) -> None:
        super().__init__(None)
        self.scheduler = scheduler
        self.nursery = nursery
        self.idle_timeout_s = idle_timeout_s
        self.episodes: dict[str, _Remote] = {}
        self.opened = 0

    @handles(OpenEpisode)
    async def open(self, msg: OpenEpisode) -> EnvObservation:
        if msg.case_id:
            case = self.scheduler.by_id.get(msg.case_id)
            if case is None:
                raise ActorError(ErrorCode.NOT_FOUND, f"no case {msg.case_id!r} in the case bank")
        else:
            case = self.scheduler.next_case()
        if msg.dialect != self.scheduler.rules.dialect:
            raise ActorError(
                ErrorCode.BAD_REQUEST,
                f"this cluster runs dialect {self.scheduler.rules.dialect!r}, not {msg.dialect!r}",
            )
        episode_id = self.scheduler.new_id() + "-env"
        events_out, events_in = trio.open_memory_channel[ActRequest | Trajectory](1)
        actions_out, actions_in = trio.open_memory_channel[EnvStep | None](1)
        remote = _Remote(
            episode_id,
            Intro(0, "", ""),
            events_in,
            events_out,
            actions_in,
            actions_out,
            self.idle_timeout_s,
        )
        self.episodes[episode_id] = remote
        self.opened += 1
        self.nursery.start_soon(self._run, remote, case)
        return await self._next(remote)

    @handles(EnvStep)
    async def step(self, msg: EnvStep) -> EnvObservation:
        remote = self._get(msg.episode_id)
        if remote.busy:
            raise ActorError(
                ErrorCode.BAD_REQUEST, f"episode {msg.episode_id} has a step in flight"
            )
        remote.busy = True
        try:
            await remote.actions_out.send(msg)
            return await self._next(remote)
        finally:
            remote.busy = False

    @handles(CloseEpisode)
    async def close_episode(self, msg: CloseEpisode) -> EnvObservation:
        """Give up on an episode: it ends aborted (and is still published)."""
        remote = self._get(msg.episode_id)
        await remote.actions_out.send(None)
        return await self._next(remote)

    @handles(StatusQuery)
    def status(self, msg: StatusQuery) -> Status:
        counters: dict[str, Any] = dict(self.scheduler.tally.summary())
        counters["env_open"] = len(self.episodes)
        counters["env_opened"] = self.opened
        counters["running"] = self.scheduler.tally.running
        return Status("scheduler", counters["elapsed_s"], [], {}, 0, 0, counters)

    def _get(self, episode_id: str) -> _Remote:
        remote = self.episodes.get(episode_id)
        if remote is None:
            raise ActorError(ErrorCode.NOT_FOUND, f"no open episode {episode_id!r}")
        return remote

    async def _run(self, remote: _Remote, case: Any) -> None:
        try:
            trajectory = await self.scheduler.run_episode(
                case, agent=remote.act, episode_id=remote.id, group_id=remote.id
            )
            await remote.events_out.send(trajectory)
        finally:
            self.episodes.pop(remote.id, None)

    async def _next(self, remote: _Remote) -> EnvObservation:
        with trio.fail_after(self.idle_timeout_s):
            event = await remote.events_in.receive()
        if isinstance(event, ActRequest):
            remote.last = event
            intro = event.intro
            step = event.steps[-1] if event.steps else None
            d = get_dialect(self.scheduler.rules.dialect)
            text = d.render_observation(step.observation) if step else d.render_intro(intro)
            return EnvObservation(
                episode_id=remote.id,
                intro=intro,
                text=text,
                observation=step.observation if step else None,
                turn=event.turn,
            )
        t = event
        last = t.turns[-1].observation if t.turns else None
        intro = remote.last.intro if remote.last else Intro(0, "", "")
        return EnvObservation(
            episode_id=remote.id,
            intro=intro,
            text=f"Episode over: {t.terminal.value} ({t.reason}).",
            observation=last,
            done=True,
            terminal=t.terminal,
            reason=t.reason,
            verdict=t.verdict,
            turn=len(t.turns),
        )
