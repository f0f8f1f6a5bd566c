"""The ceiling: the instant episode with no transport at all (trio, in-process handler calls).

`call` dispatches straight to the instant actors' handlers (`benchmarks.instant.local_call`), so
this is the cost of `run_episode_logic` itself plus one trio task per episode: the most any
transport variant could reach on this machine.

Rows (benchmark `episode_logic`): `episodes_serial`, `episodes_c256` (episodes/s).
"""

from __future__ import annotations

import trio

from benchmarks.common import Context, Row, closed_loop_trio, episode_window, log
from benchmarks.instant import local_call, run_episode_logic

__all__ = ["bench"]


def bench(ctx: Context) -> list[Row]:
    call = local_call()

    async def play(i: int) -> None:
        await run_episode_logic(call, episode_id=f"inproc-{i}")

    rows = []
    for concurrency, metric in ((1, "episodes_serial"), (256, "episodes_c256")):
        warmup_s, measure_s = episode_window(ctx, concurrency)
        result = trio.run(
            lambda c=concurrency, w=warmup_s, m=measure_s: closed_loop_trio(
                play, concurrency=c, warmup_s=w, measure_s=m
            )
        )
        rows.append(
            Row("episode_logic", metric, result.rate, "episodes/s", f"{concurrency} in flight")
        )
        log.info("episode logic, %d in flight: %.0f episodes/s", concurrency, result.rate)
    return rows
