"""Asynchrony: dxsim's engine against a turn-synchronous rollout, one batching inference server.

The design's target (DESIGN.md, "Performance targets"): against a turn-synchronous rollout
(DiagGym's loop) on long-tailed episodes with a simulated batching inference server, >= 2.5x
throughput at staleness <= 1, server busy >= 90%.

Both sides drive the same `BatchingServer`: one GPU that serves agent turns in batches. A batch of
`n` requests takes `a + b*n` seconds, one batch at a time; requests arriving while it is busy wait
for the next batch (at most `max_batch`). Both sides play the same episodes (`engine.episode`
rules, native dialect) whose lengths come from one seeded list, handed out in the order episodes
first reach the agent, and the same simulated learner: it takes `batch` trajectories, "trains"
`train_s` seconds (a `trio.sleep`: simulated compute on other hardware) and publishes the next
policy version, which the server stamps on every reply from then on (weight sync is instant).

- `sync`: DiagGym's loop, in process with no transport at all. Per training step: start `batch`
  episodes; each turn sends every active episode's agent request to the server together and waits
  for all replies (the batch waits for its slowest episode); instant patient and judge are called
  directly; when all are done, train (the server idles), repeat.
- `dxsim`: the real engine. A hub in this trio run; the simulated server behind a `SimAgent`
  actor (async `ActRequest` handler) and a memory-only `Broker` served in process; instant
  patient and judge in a worker process; `engine.scheduler.Scheduler` with
  `engine.admission.Admission(batch, max_staleness=1)`. The learner waits until `batch` more
  trajectories were accepted by the broker (the scheduler's `release` hook), pulls and acks them
  from the broker over the hub, trains, and calls `admission.set_version(v + 1)`.
- `inprocess`: `Admission` and the same learner with no engine: episodes are trio tasks calling
  the actors directly. The ceiling the staleness rule allows, so that engine cost and the rule's
  own limit can be told apart.
- `dxsim_s2`: `dxsim` with `max_staleness=2`; `sync_cb`, `dxsim_cb`: both sides against a
  continuous-batching server (16 decode steps per turn, see `BatchingServer`).

Throughput is trajectories consumed by the learner (`steps * batch`) over the wall time from the
first episode to the end of the last training step; server utilisation is the nominal busy time
of the server (sum of `a + b*n`) in that window over the window. Staleness of a consumed
trajectory is the learner's version minus the oldest policy version among its turns (the
version its first turn was generated with). The run ends when the last step is trained; episodes
still under way are abandoned, uncounted.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import trio
import trio.testing

from benchmarks.common import Context, Row, log
from benchmarks.dxsim_cluster import instant_cluster
from benchmarks.instant import bench_case, local_call
from engine.actor import Actor, handles
from engine.admission import Admission
from engine.broker import Broker
from engine.episode import Call, Episode, Finish, Rules
from engine.scheduler import Scheduler
from engine.worker import serve
from protocols import Ack, ActReply, ActRequest, Groups, Pull, Trajectory
from protocols.arrays import pack_floats, pack_ids

__all__ = [
    "BatchingServer",
    "Outcome",
    "Setting",
    "SimAgent",
    "bench",
    "dxsim_rollout",
    "episode_lengths",
    "inprocess_rollout",
    "sync_rollout",
]

BENCH = "asynchrony"
# Patient and judge answer instantly, in a worker process (the examiner is never asked).
OTHERS = {
    "others-0": ["benchmarks.instant:InstantPatient", "benchmarks.instant:InstantJudge"],
}


@dataclass(frozen=True)
class Setting:
    """The simulated world; one instance is shared by both sides of a comparison.

    Server: `a_s = 20 ms`, `b_s = 0.5 ms`. Decoding is memory-bound: a 7B model on one A100 takes
    ~11 ms per decode step at batch 1 and ~28 ms at batch 64, i.e. `a + b*n` with `a/b ~ 40`; a
    turn of ~100 tokens is then ~1.1 s + 27 ms per sequence. Scaled down 50x to keep the run short.
    Episodes: 1 + geometric(p = 0.25) agent turns, capped at 12 (mean 3.87; 4% reach the cap).
    Learner: `train_s` about the server's time to produce one batch at full batches
    (`batch * mean_turns * (a + b*max_batch) / max_batch` ~ 0.2 s), so training and rollout are
    comparable and neither side is starved by construction.
    """

    batch: int = 64  # trajectories per training step (B)
    steps: int = 8  # training steps per measurement
    a_s: float = 0.020  # server: fixed cost of a batch
    b_s: float = 0.0005  # server: cost per request in the batch
    max_batch: int = 64
    decode_steps: int = 1  # per turn; 1: whole turns as batches, 16: continuous batching
    p_stop: float = 0.25  # per-turn probability that the agent diagnoses (after turn 1)
    max_turns: int = 12
    train_s: float = 0.2  # one training step
    max_staleness: int = 1
    tokens: int = 128  # token ids (and logprobs) per agent reply
    seed: int = 0

    @property
    def mean_turns(self) -> float:
        q = 1.0 - self.p_stop
        return (1.0 - q**self.max_turns) / self.p_stop


def episode_lengths(setting: Setting, n: int) -> list[int]:
    """`n` agent-turn counts: 1 + geometric(p_stop), capped at `max_turns`, seeded."""
    rng = random.Random(setting.seed)
    out = []
    for _ in range(n):
        turns = 1
        while turns < setting.max_turns and rng.random() >= setting.p_stop:
            turns += 1
        out.append(turns)
    return out


# --- the simulated GPU ---------------------------------------------------------------------------


class BatchingServer:
    """One inference server (one GPU) serving agent turns in batches.

    A turn is `steps` decode steps; a step with `n` sequences in the batch costs
    `(a + b*n) / steps`, so a batch that stays together for a whole turn costs `a + b*n`.
    Queued requests join the batch at the next step boundary (at most `max_batch` sequences);
    a request is answered when its `steps` steps are done. `steps = 1` is a server that runs whole
    turns as batches: requests arriving while it is busy wait for the next batch. `steps > 1` is
    continuous batching (vLLM, SGLang): a request arriving mid-turn waits one step, not a turn.

    `generate()` queues a request and returns the policy version the server holds when the
    request's last step ends. `run()` is the GPU loop.
    """

    def __init__(self, a_s: float, b_s: float, max_batch: int, steps: int = 1) -> None:
        if a_s < 0 or b_s < 0 or max_batch < 1 or steps < 1:
            raise ValueError("a_s and b_s must be >= 0, max_batch and steps >= 1")
        self.a_s = a_s
        self.b_s = b_s
        self.max_batch = max_batch
        self.steps = steps
        self.version = 0  # the policy the server holds; set by the learner
        self.decode_steps = 0
        self.sequences = 0  # sum over decode steps of the batch size
        self.served = 0
        self._busy_s = 0.0  # nominal compute of finished steps
        self._step_started: float | None = None
        self._step_cost = 0.0
        self._queue: list[tuple[list[int], trio.Event]] = []
        self._wakeup = trio.lowlevel.ParkingLot()
        self._stopped = False

    def stop(self) -> None:
        """Answer nothing more (the run is over; requests in flight are abandoned)."""
        self._stopped = True
        self._wakeup.unpark_all()

    async def generate(self) -> int:
        cell: list[int] = []  # filled with the version
        done = trio.Event()
        self._queue.append((cell, done))
        self._wakeup.unpark()
        await done.wait()
        return cell[0]

    async def run(self) -> None:
        running: list[list[Any]] = []  # [steps left, cell, event]
        end = 0.0
        while True:
            idle = not running and not self._queue
            while self._stopped or (not running and not self._queue):
                await self._wakeup.park()
            if not running:  # take everything that arrives in the same instant, not the first
                await trio.lowlevel.cancel_shielded_checkpoint()
            joining = min(len(self._queue), self.max_batch - len(running))
            running += [[self.steps, cell, done] for cell, done in self._queue[:joining]]
            del self._queue[:joining]
            n = len(running)
            self._step_cost = (self.a_s + self.b_s * n) / self.steps
            self._step_started = time.perf_counter()
            # Back to back steps end on the GPU's schedule, not on when trio woke us up last:
            # timer overshoot must not count as (nor hide) server time.
            start = trio.current_time() if idle else max(end, trio.current_time() - self.a_s)
            end = start + self._step_cost
            await trio.sleep_until(end)
            self._busy_s += self._step_cost
            self._step_started = None
            self.decode_steps += 1
            self.sequences += n
            if self._stopped:
                continue
            still = []
            for seq in running:
                seq[0] -= 1
                if seq[0]:
                    still.append(seq)
                else:
                    seq[1].append(self.version)
                    seq[2].set()
                    self.served += 1
            running = still

    @property
    def mean_batch(self) -> float:
        """Sequences per decode step, on average."""
        return self.sequences / self.decode_steps if self.decode_steps else math.nan

    def busy_s(self, now: float) -> float:
        """Nominal busy time so far, counting the part of the running step already done."""
        running = 0.0
        if self._step_started is not None:
            running = min(max(now - self._step_started, 0.0), self._step_cost)
        return self._busy_s + running


# --- the agent in front of it --------------------------------------------------------------------

_QUESTIONS = (
    "When did it start?",
    "Any fever or chills?",
    "Is the pain worse on breathing in?",
    "Have you lost weight recently?",
)
_DIAGNOSIS = "<think>Enough history.</think><diagnosis>community-acquired pneumonia</diagnosis>"


class SimAgent(Actor):
    """The agent service, answered by the simulated server, in native-dialect text.

    An episode's length (agent turns, the diagnosis included) is taken from `lengths` when its
    first request arrives; it asks the patient until its last turn, then diagnoses. Replies carry
    `tokens` token ids and logprobs, and the policy version of the batch that produced them.
    """

    service = "agent"

    def __init__(self, server: BatchingServer, lengths: Iterator[int], tokens: int = 128) -> None:
        super().__init__(None)
        self.server = server
        self.lengths = lengths
        self.live: dict[str, int] = {}
        rng = random.Random(tokens)
        self.token_ids = pack_ids([rng.randrange(32_000) for _ in range(tokens)])
        self.logprobs = pack_floats([-rng.random() * 3 for _ in range(tokens)])

    async def run(self) -> None:
        await self.server.run()

    @handles(ActRequest)
    async def act(self, request: ActRequest) -> ActReply:
        length = self.live.get(request.episode_id)
        if length is None:
            length = self.live[request.episode_id] = next(self.lengths)
        version = await self.server.generate()
        if request.turn >= length - 1:
            self.live.pop(request.episode_id, None)
            text = _DIAGNOSIS
        else:
            text = f"<ask>{_QUESTIONS[request.turn % len(_QUESTIONS)]}</ask>"
        return ActReply(
            text=text, token_ids=self.token_ids, logprobs=self.logprobs, policy_version=version
        )


# --- results -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    trajectories: int = 0  # consumed by the learner
    wall_s: float = 0.0
    busy_s: float = 0.0
    mean_batch: float = math.nan  # sequences per decode step
    staleness: list[int] = field(default_factory=list)  # per consumed trajectory
    turns: list[int] = field(default_factory=list)  # agent turns per consumed trajectory

    @property
    def rate(self) -> float:
        return self.trajectories / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.wall_s if self.wall_s > 0 else math.nan

    def consume(self, version: int, trajectories: list[Trajectory]) -> None:
        """The learner at `version` trains on these."""
        for t in trajectories:
            if t.terminal.value != "diagnosed":
                raise RuntimeError(f"trajectory {t.id} ended {t.terminal.value}: {t.reason}")
            self.staleness.append(version - min(turn.policy_version for turn in t.turns))
            self.turns.append(len(t.turns))
        self.trajectories += len(trajectories)


def _rules(setting: Setting) -> Rules:
    return Rules(max_turns=setting.max_turns, request_timeout_s=60.0, attempts=1)


def _finish(out: Outcome, server: BatchingServer, t0: float) -> Outcome:
    now = time.perf_counter()
    out.wall_s = now - t0
    out.busy_s = server.busy_s(now)
    out.mean_batch = server.mean_batch
    return out


# --- turn-synchronous (DiagGym's loop) -----------------------------------------------------------


async def sync_rollout(setting: Setting) -> Outcome:
    """`steps` x (roll out `batch` episodes turn by turn, then train); no transport at all."""
    server = BatchingServer(setting.a_s, setting.b_s, setting.max_batch, setting.decode_steps)
    lengths = episode_lengths(setting, setting.steps * setting.batch)
    agent = SimAgent(server, iter(lengths), setting.tokens)
    others = local_call()
    rules = _rules(setting)
    case = bench_case()
    out = Outcome()
    serial = itertools.count()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        t0 = time.perf_counter()
        for version in range(setting.steps):
            episodes = [
                Episode(f"sync-{next(serial)}", case, rules, now=time.time())
                for _ in range(setting.batch)
            ]
            calls: dict[int, Call | Finish] = {i: e.start() for i, e in enumerate(episodes)}
            while any(isinstance(c, Call) for c in calls.values()):
                active = [i for i, c in calls.items() if isinstance(c, Call)]
                replies: dict[int, ActReply] = {}

                async def turn(i: int, request: ActRequest, replies: dict[int, ActReply]) -> None:
                    replies[i] = await agent.act(request)

                async with trio.open_nursery() as turn_nursery:  # everyone waits for the slowest
                    for i in active:
                        call = calls[i]
                        assert isinstance(call, Call) and call.service == "agent"
                        turn_nursery.start_soon(turn, i, call.requests[0], replies)
                for i in active:
                    step = episodes[i].advance([replies[i]], time.time())
                    while isinstance(step, Call) and step.service != "agent":  # instant actors
                        answers = [await others(step.service, r) for r in step.requests]
                        step = episodes[i].advance(answers, time.time())
                    calls[i] = step
            out.consume(version, [c.trajectory for c in calls.values() if isinstance(c, Finish)])
            await trio.sleep(setting.train_s)  # training; the server idles
            server.version = version + 1
        _finish(out, server, t0)
        nursery.cancel_scope.cancel()
    return out


# --- asynchronous without the engine (the rule's own ceiling) -----------------------------------


async def inprocess_rollout(setting: Setting) -> Outcome:
    """dxsim's scheduling rule with no transport: episodes as trio tasks under `Admission`.

    Separates what the staleness rule allows from what the engine's messaging costs: the agent,
    patient and judge are called directly, and the learner takes trajectories in completion order.
    """
    server = BatchingServer(setting.a_s, setting.b_s, setting.max_batch, setting.decode_steps)
    lengths = episode_lengths(setting, (setting.steps + setting.max_staleness + 2) * setting.batch)
    agent = SimAgent(server, iter(lengths), setting.tokens)
    others = local_call()
    rules = _rules(setting)
    case = bench_case()
    admission = Admission(setting.batch, setting.max_staleness)
    done: list[Trajectory] = []
    lot = trio.lowlevel.ParkingLot()
    serial = itertools.count()
    out = Outcome()

    async def episode() -> None:
        e = Episode(f"async-{next(serial)}", case, rules, now=time.time())
        step = e.start()
        while isinstance(step, Call):
            if step.service == "agent":
                step = e.advance([await agent.act(step.requests[0])], time.time())
            else:
                answers = [await others(step.service, r) for r in step.requests]
                step = e.advance(answers, time.time())
        done.append(step.trajectory)
        admission.finished(True)
        lot.unpark_all()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)

        async def learner() -> None:
            for version in range(setting.steps):
                while len(done) < (version + 1) * setting.batch:
                    await lot.park()
                out.consume(version, done[version * setting.batch : (version + 1) * setting.batch])
                await trio.sleep(setting.train_s)
                server.version = version + 1
                admission.set_version(version + 1)
            _finish(out, server, t0)
            nursery.cancel_scope.cancel()

        t0 = time.perf_counter()
        nursery.start_soon(learner)
        while True:
            await admission.admit()
            nursery.start_soon(episode)
    return out


# --- dxsim ---------------------------------------------------------------------------------------


class _Accepted:
    """Trajectories the broker accepted, counted from the scheduler's `release` hook."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.count = 0
        self._lot = trio.lowlevel.ParkingLot()

    def release(self, accepted: bool) -> None:
        self.admission.finished(accepted)
        if accepted:
            self.count += 1
            self._lot.unpark_all()

    async def wait_for(self, n: int) -> None:
        while self.count < n:
            await self._lot.park()


async def dxsim_rollout(setting: Setting, *, ready_timeout_s: float = 60.0) -> Outcome:
    """The same world through the engine: scheduler + admission + broker + hub + workers."""
    server = BatchingServer(setting.a_s, setting.b_s, setting.max_batch, setting.decode_steps)
    # More lengths than consumed: with staleness 1 up to a batch more episodes are under way.
    lengths = episode_lengths(setting, (setting.steps + setting.max_staleness + 2) * setting.batch)
    agent = SimAgent(server, iter(lengths), setting.tokens)
    admission = Admission(setting.batch, setting.max_staleness)
    accepted = _Accepted(admission)
    out = Outcome()
    async with instant_cluster(OTHERS) as (hub, client), trio.open_nursery() as nursery:
        for actor, capacity in ((agent, 4096), (Broker(), 4096)):
            await nursery.start(
                lambda a=actor, c=capacity, **kw: serve(
                    a, hub.bound[0], ctx=hub.ctx, capacity=c, **kw
                )
            )
        with trio.fail_after(ready_timeout_s):
            while not {"agent", "broker"} <= set(hub.router.services()):
                await trio.sleep(0.01)
        scheduler = Scheduler(
            client,
            [bench_case()],
            _rules(setting),
            concurrency=(setting.max_staleness + 1) * setting.batch,  # admission is the limit
            seed=setting.seed,
            admit=admission.admit,
            release=accepted.release,
        )

        async def learner() -> None:
            for version in range(setting.steps):
                await accepted.wait_for((version + 1) * setting.batch)
                with trio.fail_after(30):
                    groups = await client.request(
                        "broker", Pull(max_groups=setting.batch, lease_s=600.0)
                    )
                    assert isinstance(groups, Groups)
                    got = [t for g in groups.groups for t in g]
                    if len(got) != setting.batch:
                        raise RuntimeError(
                            f"pulled {len(got)} trajectories, wanted {setting.batch}"
                        )
                    await client.request("broker", Ack(groups.lease))
                out.consume(version, got)
                await trio.sleep(setting.train_s)  # training, on other hardware
                server.version = version + 1  # weight sync: instant
                admission.set_version(version + 1)
            _finish(out, server, t0)
            scheduler.stop()
            admission.stop()
            server.stop()
            # Let replies already produced reach the hub before the workers' sockets close.
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # episodes still under way are abandoned

        t0 = time.perf_counter()
        nursery.start_soon(learner)
        await scheduler.run(None)
        await trio.sleep_forever()  # until the learner is done
    return out


# --- the benchmark -------------------------------------------------------------------------------


def setting_for(ctx: Context) -> Setting:
    return ctx.scale(Setting(), Setting(batch=8, steps=2, train_s=0.03))


def describe(setting: Setting) -> str:
    lengths = episode_lengths(setting, setting.steps * setting.batch)
    return (
        f"B={setting.batch} x {setting.steps} steps; server {setting.a_s * 1e3:g} ms + "
        f"{setting.b_s * 1e3:g} ms/seq per turn, max batch {setting.max_batch}, "
        f"{setting.decode_steps} steps/turn; train {setting.train_s:g} s; "
        f"turns mean {sum(lengths) / len(lengths):.2f} max {max(lengths)}"
    )


def rows(name: str, out: Outcome, note: str, max_staleness: int) -> list[Row]:
    """The rows of one variant (`sync`, `dxsim`, ...)."""
    result = [
        Row(BENCH, f"traj_per_s_{name}", out.rate, "traj/s", note),
        Row(BENCH, f"server_util_{name}", out.utilisation, "fraction", "busy / wall"),
        Row(BENCH, f"mean_batch_{name}", out.mean_batch, "seqs", "per decode step"),
    ]
    if not name.startswith("sync"):
        n = len(out.staleness)
        over = sum(1 for s in out.staleness if s > max_staleness)
        result += [
            Row(BENCH, f"staleness_max_{name}", float(max(out.staleness)), "versions"),
            Row(BENCH, f"staleness_mean_{name}", sum(out.staleness) / n, "versions"),
            Row(BENCH, f"over_staleness_{name}", over / n, "fraction", f"> {max_staleness}"),
            Row(BENCH, f"turns_mean_{name}", sum(out.turns) / n, "turns", "consumed"),
        ]
    return result


def bench(ctx: Context) -> list[Row]:
    setting = setting_for(ctx)
    s2 = replace(setting, max_staleness=2)
    cb = replace(setting, decode_steps=16)
    result = [Row(BENCH, "server_util_full", 1.0, "fraction", "reference: always busy")]
    for name, run, world, note in (
        ("sync", sync_rollout, setting, describe(setting)),
        ("dxsim", dxsim_rollout, setting, "engine, max_staleness=1"),
        ("inprocess", inprocess_rollout, setting, "same rule, no transport, max_staleness=1"),
        ("dxsim_s2", dxsim_rollout, s2, "engine, max_staleness=2"),
        ("sync_cb", sync_rollout, cb, "continuous batching, 16 steps per turn"),
        ("dxsim_cb", dxsim_rollout, cb, "continuous batching, engine, max_staleness=1"),
    ):
        out = trio.run(run, world)
        log.info(
            "asynchrony %s: %.1f traj/s, server busy %.0f%%, mean batch %.1f, max staleness %s",
            name,
            out.rate,
            100 * out.utilisation,
            out.mean_batch,
            max(out.staleness),
        )
        result += rows(name, out, note, world.max_staleness)
    return result


if __name__ == "__main__":
    import sys

    result = bench(Context(quick="--quick" in sys.argv))
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
