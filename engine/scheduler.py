"""Runs episodes as trio tasks: admission, calls with timeouts and retries, publishing.

The rules of an episode live in `engine.episode.Episode`; this module only makes its calls. Each
call gets `rules.request_timeout_s` per attempt and `rules.attempts` attempts (the hub has already
re-sent requests whose worker died); when they run out the episode ends aborted with the reason.
Every finished trajectory is published to the broker exactly once (the broker drops duplicate ids,
so a publish retried after a lost reply is harmless). A broker that refuses with `OVERLOADED` (it
holds `max_pending` trajectories) is backpressure, not a failure: the episode keeps its slot and
retries with capped exponential backoff until the broker takes the trajectory, so no new episode
starts and at most `concurrency` finished trajectories wait in the scheduler.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import trio

from engine.admission import AdmissionClosed
from engine.client import HubUnreachable, RemoteError, RequestTimeout
from engine.episode import Call, Episode, EpisodeError, Finish, Rules
from protocols import (
    ActReply,
    ActRequest,
    Case,
    ErrorCode,
    ProtocolError,
    Publish,
    Published,
    Terminal,
    Trajectory,
)

log = structlog.get_logger("engine.scheduler")

AgentPort = Callable[[ActRequest], Awaitable[ActReply]]
_FINAL = {ErrorCode.BAD_REQUEST, ErrorCode.BAD_MESSAGE, ErrorCode.VERSION_MISMATCH}


class Requester(Protocol):
    async def request(self, service: str, body: Any, *, timeout: float = ...) -> Any: ...


class CallFailed(Exception):
    pass


@dataclass
class Tally:
    """Running totals, for the progress bar, `status` and the summary."""

    started: int = 0
    running: int = 0
    published: int = 0
    publish_failed: int = 0
    overload_waits: int = 0  # publishes refused with OVERLOADED and retried after a backoff
    holding: int = 0  # finished trajectories waiting for an overloaded broker now
    terminal: dict[str, int] = field(default_factory=dict)
    judged: int = 0
    correct: int = 0
    exam_f1: float = 0.0
    reward: float = 0.0
    cost: float = 0.0
    turns: int = 0
    t0: float = field(default_factory=time.monotonic)

    def add(self, t: Trajectory) -> None:
        self.terminal[t.terminal.value] = self.terminal.get(t.terminal.value, 0) + 1
        self.cost += t.cost
        self.turns += len(t.turns)
        if t.verdict is not None:
            self.judged += 1
            self.correct += int(t.verdict.correct)
            self.exam_f1 += t.verdict.exam_f1
            self.reward += t.verdict.reward

    @property
    def finished(self) -> int:
        return sum(self.terminal.values())

    def summary(self) -> dict[str, float]:
        n = max(self.finished, 1)
        judged = max(self.judged, 1)
        elapsed = time.monotonic() - self.t0
        return {
            "episodes": self.finished,
            "published": self.published,
            "publish_failed": self.publish_failed,
            "overload_waits": self.overload_waits,
            "diagnosed": self.terminal.get(Terminal.DIAGNOSED.value, 0),
            "truncated": self.terminal.get(Terminal.TRUNCATED.value, 0),
            "aborted": self.terminal.get(Terminal.ABORTED.value, 0),
            "accuracy": self.correct / n,
            "exam_f1": self.exam_f1 / judged,
            "reward": self.reward / judged,
            "cost": self.cost / n,
            "turns": self.turns / n,
            "elapsed_s": elapsed,
            "episodes_per_s": self.finished / elapsed if elapsed > 0 else 0.0,
        }


class Scheduler:
    #: Backoff while the broker is OVERLOADED: the first wait, doubled per refusal up to the cap.
    overload_backoff_s: float = 0.01
    overload_backoff_max_s: float = 1.0

    def __init__(
        self,
        client: Requester,
        cases: Sequence[Case],
        rules: Rules,
        *,
        concurrency: int = 64,
        group_size: int = 1,
        seed: int = 0,
        broker: str = "broker",
        admit: Callable[[], Awaitable[None]] | None = None,
        release: Callable[[bool], None] | None = None,
    ) -> None:
        if not cases:
            raise ValueError("the scheduler needs at least one case")
        self.client = client
        self.cases = list(cases)
        self.by_id = {c.id: c for c in self.cases}
        self.rules = rules
        self.concurrency = concurrency
        self.group_size = group_size
        self.broker = broker
        self.admit = admit
        # Called once per episode `run` launched, with whether the broker accepted its trajectory
        # (e.g. `engine.admission.Admission.finished`); `admit` raising `AdmissionClosed` stops.
        self.release = release
        self._admitting: trio.CancelScope | None = None
        self._backing_off: set[trio.CancelScope] = set()  # overload waits; stop() ends them
        self.tally = Tally()
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self._serial = 0
        self._prefix = f"{seed:x}-{int(time.time()):x}"
        self.stopping = False

    # --- running many -----------------------------------------------------------------------

    async def run(
        self, episodes: int | None, on_finish: Callable[[Trajectory], None] | None = None
    ) -> None:
        """Run `episodes` episodes (None: until `stop()`), `group_size` per case."""
        limiter = trio.CapacityLimiter(self.concurrency)
        async with trio.open_nursery() as nursery:
            launched = 0
            while not self.stopping and (episodes is None or launched < episodes):
                case = self.next_case()
                group = self.new_id()
                for sample in range(self.group_size):
                    if episodes is not None and launched >= episodes:
                        break
                    if self.stopping:
                        break
                    if self.admit is not None and not await self._admitted():
                        break
                    try:
                        await limiter.acquire_on_behalf_of(group + str(sample))
                    except BaseException:
                        if self.release is not None:
                            self.release(False)
                        raise
                    if self.stopping:  # stop() came while we waited for a slot
                        limiter.release_on_behalf_of(group + str(sample))
                        if self.release is not None:
                            self.release(False)
                        break
                    nursery.start_soon(self._run_one, case, group, sample, limiter, on_finish)
                    launched += 1

    async def _admitted(self) -> bool:
        """Wait for `admit`; False when stopped meanwhile (`stop()` or `AdmissionClosed`)."""
        assert self.admit is not None
        self._admitting = scope = trio.CancelScope()
        try:
            with scope:
                await self.admit()
        except AdmissionClosed:
            self.stopping = True
            return False
        finally:
            self._admitting = None
        if scope.cancelled_caught:
            return False
        if self.stopping:  # admitted, but stop() came first: give the slot back
            if self.release is not None:
                self.release(False)
            return False
        return True

    def stop(self) -> None:
        """Start no new episodes; running ones finish."""
        self.stopping = True
        if self._admitting is not None:
            self._admitting.cancel()
        for scope in self._backing_off:
            scope.cancel()

    async def _run_one(
        self,
        case: Case,
        group: str,
        sample: int,
        limiter: trio.CapacityLimiter,
        on_finish: Callable[[Trajectory], None] | None,
    ) -> None:
        accepted = False
        try:
            trajectory, accepted = await self._play(case, group_id=group, sample=sample)
            if on_finish is not None:
                on_finish(trajectory)
        finally:
            limiter.release_on_behalf_of(group + str(sample))
            if self.release is not None:
                self.release(accepted)

    def next_case(self) -> Case:
        if not self._order:
            self._order = list(range(len(self.cases)))
            self._rng.shuffle(self._order)
        return self.cases[self._order.pop()]

    def new_id(self) -> str:
        self._serial += 1
        return f"ep-{self._prefix}-{self._serial:06d}"

    # --- one episode ------------------------------------------------------------------------

    async def run_episode(
        self,
        case: Case,
        *,
        group_id: str = "",
        sample: int = 0,
        agent: AgentPort | None = None,
        episode_id: str | None = None,
    ) -> Trajectory:
        """Play one episode to its end and publish it; never raises for actor failures."""
        trajectory, _ = await self._play(
            case, group_id=group_id, sample=sample, agent=agent, episode_id=episode_id
        )
        return trajectory

    async def _play(
        self,
        case: Case,
        *,
        group_id: str = "",
        sample: int = 0,
        agent: AgentPort | None = None,
        episode_id: str | None = None,
    ) -> tuple[Trajectory, bool]:
        """`run_episode`, also saying whether the broker accepted the trajectory."""
        episode_id = episode_id or (f"{group_id}.{sample}" if group_id else self.new_id())
        episode = Episode(
            episode_id,
            case,
            self.rules,
            group_id=group_id,
            sample=sample,
            group_size=self.group_size,
            now=time.time(),
        )
        self.tally.started += 1
        self.tally.running += 1
        bound = log.bind(episode_id=episode_id, case_id=case.id)
        try:
            step: Call | Finish = episode.start()
            while isinstance(step, Call):
                try:
                    if step.service == "agent" and agent is not None:
                        replies = [await agent(step.requests[0])]  # the port owns its timeout
                    else:
                        replies = await self._call_all(step.service, step.requests)
                    step = episode.advance(replies, time.time())
                except (CallFailed, EpisodeError, trio.TooSlowError) as exc:
                    reason = str(exc) or type(exc).__name__
                    bound.warning("episode aborted", state=episode.state, reason=reason)
                    step = episode.fail(reason, time.time())
        finally:
            self.tally.running -= 1
        trajectory = step.trajectory
        self.tally.add(trajectory)
        return trajectory, await self._publish(trajectory, bound)

    async def _call_all(self, service: str, requests: list[Any]) -> list[Any]:
        if len(requests) == 1:
            return [await self.call(service, requests[0])]
        replies: list[Any] = [None] * len(requests)

        async def one(i: int, request: Any) -> None:
            replies[i] = await self.call(service, request)

        async with trio.open_nursery() as nursery:
            for i, request in enumerate(requests):
                nursery.start_soon(one, i, request)
        return replies

    async def call(self, service: str, request: Any) -> Any:
        """One request with the rules' timeout and attempts; raises `CallFailed` at the end."""
        rules = self.rules
        last = ""
        for attempt in range(rules.attempts):
            try:
                return await self.client.request(service, request, timeout=rules.request_timeout_s)
            except RemoteError as exc:
                last = str(exc)
                if exc.code in _FINAL:
                    break
            except (RequestTimeout, HubUnreachable, ProtocolError) as exc:
                last = str(exc)
            if attempt + 1 < rules.attempts:
                await trio.sleep(min(0.05 * 2**attempt, 1.0))
        raise CallFailed(f"{last} (after {attempt + 1} attempt{'s' if attempt else ''})")

    async def _publish(self, trajectory: Trajectory, bound: Any) -> bool:
        """Publish with the rules' timeout and attempts; True if the broker took it.

        `OVERLOADED` is not an attempt: the trajectory is held (its episode's slot stays taken) and
        offered again after a capped exponential backoff, until the broker takes it or `stop()`
        is called (then it counts as `publish_failed`, logged as an error).
        """
        rules = self.rules
        request = Publish(trajectory)
        failures = 0
        refusals = 0
        last = ""
        try:
            while True:
                final = False
                try:
                    reply = await self.client.request(
                        self.broker, request, timeout=rules.request_timeout_s
                    )
                except RemoteError as exc:
                    if exc.code == ErrorCode.OVERLOADED:
                        if refusals == 0:
                            self.tally.holding += 1
                        refusals += 1
                        if await self._wait_overloaded(refusals):
                            continue
                        self.tally.publish_failed += 1
                        bound.error(
                            "trajectory not published: scheduler stopped while the broker was "
                            "overloaded",
                            trajectory_id=trajectory.id,
                            overload_refusals=refusals,
                        )
                        return False
                    last, final = str(exc), exc.code in _FINAL
                except (RequestTimeout, HubUnreachable, ProtocolError) as exc:
                    last = str(exc)
                else:
                    break
                failures += 1
                if final or failures >= rules.attempts:
                    self.tally.publish_failed += 1
                    bound.error(
                        "trajectory not published",
                        trajectory_id=trajectory.id,
                        error=f"{last} (after {failures} attempt{'s' if failures > 1 else ''})",
                    )
                    return False
                await trio.sleep(min(0.05 * 2 ** (failures - 1), 1.0))
        finally:
            if refusals:
                self.tally.holding -= 1
        if isinstance(reply, Published):
            self.tally.published += 1
            if refusals:
                bound.info(
                    "trajectory published after backpressure",
                    trajectory_id=trajectory.id,
                    overload_refusals=refusals,
                )
            return True
        self.tally.publish_failed += 1
        bound.error("broker replied oddly", reply=type(reply).__name__)
        return False

    async def _wait_overloaded(self, refusals: int) -> bool:
        """Back off after the `refusals`-th OVERLOADED; False (at once) when stopped."""
        if self.stopping:
            return False
        self.tally.overload_waits += 1
        doubled = self.overload_backoff_s * 2 ** min(refusals - 1, 30)
        delay = min(doubled, self.overload_backoff_max_s)
        scope = trio.CancelScope()
        self._backing_off.add(scope)
        try:
            with scope:
                await trio.sleep(delay)
        finally:
            self._backing_off.discard(scope)
        return not self.stopping
