"""The registry of benchmarks: name -> `bench(ctx: Context) -> list[Row]`.

Entries are import strings ("module:function") so that listing or running one benchmark never
imports another's dependencies (Ray is only imported by `ray_episodes`), and so that the runner's
subprocess can find the function. A module-level function may be registered directly too; it is
stored by its import string.

Two names are reserved for the dxsim half and are picked up as soon as their module exists:
`dxsim_episodes` (`benchmarks/dxsim_episodes.py`) and `dxsim_roundtrip`
(`benchmarks/dxsim_roundtrip.py`), each defining `bench`. See `benchmarks.report.COMPARISONS` for
the rows they are expected to produce.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from benchmarks.common import Context, Row

__all__ = ["PLANNED", "REGISTRY", "BenchFn", "available", "register", "resolve"]

BenchFn = Callable[[Context], list[Row]]

REGISTRY: dict[str, str] = {
    "episode_logic": "benchmarks.episode_logic:bench",
    "raw_zmq": "benchmarks.raw_zmq:bench",
    "ray_episodes": "benchmarks.ray_episodes:bench",
    "asynchrony": "benchmarks.asynchrony:bench",
    "broker_load": "benchmarks.broker_load:bench",
    "weight_sync": "benchmarks.weight_sync:bench",
}

PLANNED: dict[str, str] = {
    "dxsim_episodes": "benchmarks.dxsim_episodes:bench",
    "dxsim_roundtrip": "benchmarks.dxsim_roundtrip:bench",
}


def register(name: str, target: str | BenchFn) -> None:
    """Add a benchmark: `target` is "module:function" or a module-level function."""
    if not isinstance(target, str):
        module, qualname = target.__module__, target.__qualname__
        if "<" in qualname or module == "__main__":
            raise ValueError(f"{target!r} must be a module-level function of an importable module")
        target = f"{module}:{qualname}"
    if ":" not in target:
        raise ValueError(f"benchmark target {target!r} is not 'module:function'")
    REGISTRY[name] = target


def _module_exists(target: str) -> bool:
    module = target.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def available() -> dict[str, str]:
    """Registered benchmarks plus the planned ones whose module exists, in run order."""
    found = dict(REGISTRY)
    for name, target in PLANNED.items():
        if name not in found and _module_exists(target):
            found[name] = target
    return found


def resolve(target: str) -> BenchFn:
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj  # type: ignore[return-value]
