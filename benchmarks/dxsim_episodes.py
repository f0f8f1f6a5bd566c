"""dxsim's half of the engine-overhead benchmark: the instant 6-turn episode through the hub.

The same `run_episode_logic` and instant actors as `ray_episodes`, so only the transport differs:
here each call is a request through the dxsim hub to a worker process. Rows:

- `episodes_serial`, `episodes_c256`: one worker process per service (Ray's layout).
- `episodes_c256_cohosted`: all four actors in one worker process (`services.X.host`).
- `episodes_c256_scheduler`: the real engine scheduler (episode state machine, rules, dialect,
  publishing to a broker) instead of `run_episode_logic`; it answers the repeated exam order from
  the first result, so an episode makes 11 actor requests plus one publish.
"""

from __future__ import annotations

import trio

from benchmarks.common import Context, Row, closed_loop_trio, episode_window, log
from benchmarks.dxsim_cluster import COHOSTED, PER_SERVICE, instant_cluster
from benchmarks.instant import bench_case, run_episode_logic
from engine.broker import Broker
from engine.episode import Rules
from engine.scheduler import Scheduler
from engine.worker import serve

__all__ = ["bench"]


async def _measure(
    layout: dict[str, list[str]], concurrency: int, ctx: Context, engine: bool
) -> float:
    warmup_s, measure_s = episode_window(ctx, concurrency)
    async with instant_cluster(layout) as (hub, client):
        if engine:
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda **kw: serve(Broker(), hub.bound[0], ctx=hub.ctx, **kw))
                scheduler = Scheduler(client, [bench_case()], Rules(max_turns=6))

                async def play(i: int) -> None:
                    await scheduler.run_episode(bench_case())

                result = await closed_loop_trio(
                    play, concurrency=concurrency, warmup_s=warmup_s, measure_s=measure_s
                )
                assert scheduler.tally.terminal == {"diagnosed": scheduler.tally.finished}
                nursery.cancel_scope.cancel()
        else:

            async def play(i: int) -> None:
                await run_episode_logic(client.request, episode_id=f"dx-{i}")

            result = await closed_loop_trio(
                play, concurrency=concurrency, warmup_s=warmup_s, measure_s=measure_s
            )
    return result.rate


def bench(ctx: Context) -> list[Row]:
    rows = []
    for metric, layout, concurrency, engine, note in (
        ("episodes_serial", PER_SERVICE, 1, False, "1 in flight, a process per service"),
        ("episodes_c256", PER_SERVICE, 256, False, "256 in flight, a process per service"),
        ("episodes_c256_cohosted", COHOSTED, 256, False, "256 in flight, one worker process"),
        ("episodes_c256_scheduler", PER_SERVICE, 256, True, "engine scheduler + broker"),
    ):
        rate = trio.run(_measure, layout, concurrency, ctx, engine)
        rows.append(Row("dxsim_episodes", metric, rate, "episodes/s", note))
        log.info("dxsim %s: %.0f episodes/s", metric, rate)
    return rows


if __name__ == "__main__":
    for row in bench(Context(quick=True)):
        log.info("%s", row)
