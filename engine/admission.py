"""Staleness admission (AReaL's rule): how many episodes the scheduler may have started.

With `batch` trajectories per training step and the learner at policy `version`, the trajectories
that are accepted by the broker or still running must fit in the training steps up to
`version + max_staleness`:

    accepted + running <= (max_staleness + version + 1) * batch

where the left side counts the episode about to start. Before a start, with `running` the episodes
already in flight, the controller therefore admits exactly while

    accepted + running < (max_staleness + version + 1) * batch

(integers: `a + r + 1 <= C` is `a + r < C`). A trajectory is then at most `max_staleness` versions
older than the policy that trains on it; `max_staleness = 0` is synchronous RL: `batch` episodes,
then nothing until the learner publishes version 1, and so on.

`accepted` only grows (the broker keeps what it accepted until a learner consumes it, and the
learner's progress shows up as `version`); an episode that ends rejected (publish failed, filtered)
frees its slot. The admitted episode counts as running from the moment `admit()` returns, so
nothing can slip in between the check and the start.

Trio-aware and sleep-free: waiters park on a `ParkingLot` and are woken by `set_version`,
`finished` and `stop`. Not thread-safe: call everything from the trio thread that awaits `admit`.
"""

from __future__ import annotations

import trio

__all__ = ["Admission", "AdmissionClosed"]


class AdmissionClosed(Exception):
    """`admit()` after (or while waiting when) the controller was stopped."""


class Admission:
    def __init__(
        self, batch: int, max_staleness: int = 0, *, version: int = 0, accepted: int = 0
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if version < 0 or accepted < 0:
            raise ValueError("version and accepted must be >= 0")
        self.batch = batch
        self.max_staleness = max_staleness
        self.version = version
        self.accepted = accepted
        self.running = 0
        self.rejected = 0
        self.closed = False
        self._lot = trio.lowlevel.ParkingLot()

    # --- the rule ---------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """`(max_staleness + version + 1) * batch`: the most accepted-or-running trajectories."""
        return (self.max_staleness + self.version + 1) * self.batch

    @property
    def free(self) -> int:
        """Episodes that may start now (0 while the learner must catch up)."""
        return max(self.capacity - self.accepted - self.running, 0)

    def allows(self) -> bool:
        return self.accepted + self.running < self.capacity

    @property
    def waiting(self) -> int:
        return len(self._lot)

    # --- the scheduler's side ---------------------------------------------------------------

    async def admit(self) -> None:
        """Wait until the rule allows one more episode, then count it as running.

        Raises `AdmissionClosed` once `stop()` was called. Cancel-safe: a cancelled wait reserves
        nothing. Always a checkpoint.
        """
        await trio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise AdmissionClosed("admission stopped")
            if self.allows():
                self.running += 1  # no checkpoint between the check and the reservation
                return
            await self._lot.park()

    def try_admit(self) -> bool:
        """Non-blocking `admit`: count one more running episode if the rule allows it."""
        if self.closed or not self.allows():
            return False
        self.running += 1
        return True

    def started(self) -> None:
        """Count an episode started without `admit` (e.g. re-run after a restart)."""
        self.running += 1

    def finished(self, accepted: bool) -> None:
        """An admitted episode ended: its trajectory was accepted by the broker, or not."""
        if self.running <= 0:
            raise RuntimeError("finished() without a running episode")
        self.running -= 1
        if accepted:
            self.accepted += 1
        else:
            self.rejected += 1
            self._lot.unpark_all()  # a slot came free

    def discard(self, n: int) -> None:
        """`n` accepted trajectories left the broker untrained (a learner filtered their groups):
        they free their slots, as a rejected episode does."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self.accepted = max(self.accepted - n, 0)
        self._lot.unpark_all()

    def add_accepted(self, n: int = 1) -> None:
        """Trajectories the broker holds that were not started here (e.g. replayed at start)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self.accepted += n

    # --- the learner's side -----------------------------------------------------------------

    def resume_at(self, version: int) -> None:
        """The learner starts at `version` (resumed from a checkpoint): the `version * batch`
        trajectories it trained on before count as accepted, so the rule holds as if this
        controller had seen the whole run."""
        if version < 0:
            raise ValueError("version must be >= 0")
        if version > self.version:
            self.accepted += (version - self.version) * self.batch
            self.version = version
            self._lot.unpark_all()

    def rebase(self, version: int, held: int) -> None:
        """The learner is at `version` while the broker holds `held` accepted trajectories that no
        learner has consumed: from now on `accepted` is `version * batch + held`, the trajectories
        the learner's steps trained on plus those still waiting.

        Counting from the broker keeps the rule exact when trajectories leave it other than by
        training: a learner restarted from a checkpoint older than its last announced version lost
        the steps after it (the trajectories they consumed were acked and are gone; counting them
        would leave the rule short of capacity for good and starve the rollouts), and a learner
        that filters groups without signal consumes more than `batch` per step. An episode
        published but not yet `finished` is counted twice until the next rebase (conservative)."""
        if version < 0 or held < 0:
            raise ValueError("version and held must be >= 0")
        self.version = version
        self.accepted = version * self.batch + held
        self._lot.unpark_all()

    def set_version(self, version: int) -> None:
        """The learner published `version`; older versions (late or reordered news) are ignored."""
        if version > self.version:
            self.version = version
            self._lot.unpark_all()

    def stop(self) -> None:
        """Admit nothing more: current and future `admit()` calls raise `AdmissionClosed`."""
        self.closed = True
        self._lot.unpark_all()

    def stats(self) -> dict[str, int]:
        return {
            "version": self.version,
            "accepted": self.accepted,
            "running": self.running,
            "rejected": self.rejected,
            "capacity": self.capacity,
            "waiting": self.waiting,
        }
