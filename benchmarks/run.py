"""Run benchmarks side by side: `python -m benchmarks.run [names...] [--quick] [--out DIR]`.

Each named benchmark runs in its own subprocess (its own session, so Ray's or dxsim's processes
never outlive it), which calls the benchmark function `--rounds` times (3) and writes every round's
rows to a file. The runner then takes the median of each (benchmark, metric), computes the ratios
of `benchmarks.report.COMPARISONS`, prints a markdown table and writes `results.json` and
`results.md` to `<out>/<timestamp>/` (default `benchmarks/results/`).

Every process a benchmark starts inherits a marker in its environment; after the benchmark ends,
any process still carrying the marker is reported as a stray (in the table and the JSON) and
terminated by its pid. Progress goes to stderr; only the final table goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from importlib import metadata
from pathlib import Path

import msgspec

from benchmarks.common import Context, Row
from benchmarks.registry import available, resolve
from benchmarks.report import BenchmarkRun, Report, compare, markdown, summarize

log = logging.getLogger("benchmarks.run")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MARKER = "DXSIM_BENCH_MARKER"


class ChildResult(msgspec.Struct):
    rounds: list[list[Row]] = []
    error: str = ""


# --- child side ----------------------------------------------------------------------------------


def _child(target: str, result: Path, rounds: int, quick: bool) -> int:
    out = ChildResult()
    code = 0
    try:
        fn = resolve(target)
        with Context(quick=quick, rounds=rounds) as ctx:
            for r in range(rounds):
                ctx.round = r
                log.info("%s: round %d/%d", target, r + 1, rounds)
                out.rounds.append(list(fn(ctx)))
                result.write_bytes(msgspec.json.encode(out))
    except BaseException:  # noqa: BLE001 - reported to the parent, which decides
        out.error = traceback.format_exc()
        log.error("%s failed:\n%s", target, out.error)
        code = 1
    result.write_bytes(msgspec.json.encode(out))
    return code


# --- parent side ---------------------------------------------------------------------------------


def _marked(marker: str) -> list[object]:
    import psutil

    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == marker:
                found.append(proc)
    return found


def _reap_strays(marker: str, grace: float = 10.0) -> list[str]:
    """Wait `grace` s for the benchmark's processes to exit; terminate (then kill) the rest."""
    import psutil

    alive = _marked(marker)
    if alive:
        _, alive = psutil.wait_procs(alive, timeout=grace)  # type: ignore[arg-type]
    strays = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            strays.append(f"{proc.name()}[{proc.pid}]")
            proc.terminate()
    if alive:
        _, alive = psutil.wait_procs(alive, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        log.warning("killed stray processes: %s", ", ".join(strays))
    return strays


def run_benchmark(
    name: str, target: str, *, rounds: int, quick: bool, timeout: float
) -> BenchmarkRun:
    marker = f"{name}-{uuid.uuid4().hex}"
    env = dict(os.environ)
    env[MARKER] = marker
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    status, error = "ok", ""
    with tempfile.TemporaryDirectory(prefix="dxsim-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--child",
            target,
            "--result",
            str(result),
            "--rounds",
            str(rounds),
        ] + (["--quick"] if quick else [])
        log.info("== %s (%s)", name, target)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status, error = "timeout", f"no result after {timeout:.0f} s"
            log.error("%s: %s; stopping it", name, error)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
        child = ChildResult()
        if result.exists():
            with contextlib.suppress(msgspec.DecodeError):
                child = msgspec.json.decode(result.read_bytes(), type=ChildResult)
        if status == "ok" and (code != 0 or child.error):
            status, error = "failed", child.error or f"exit code {code}"
    strays = _reap_strays(marker)
    seconds = time.perf_counter() - t0
    log.info("== %s: %s in %.1f s, %d rounds", name, status, seconds, len(child.rounds))
    return BenchmarkRun(name, target, status, seconds, child.rounds, error, strays)


def machine(load_at_start: str) -> dict[str, str]:
    info = {
        "loadavg_start": load_at_start,
        "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    for dist in ("msgspec", "pyzmq", "trio", "ray"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[dist] = metadata.version(dist)
    with contextlib.suppress(ImportError):
        import zmq

        info["libzmq"] = zmq.zmq_version()
    info["summary"] = (
        f"{info.get('cpus')} CPUs ({info.get('cpu', '?')}), Python {info['python']}, "
        f"pyzmq {info.get('pyzmq', '?')} (libzmq {info.get('libzmq', '?')}), "
        f"msgspec {info.get('msgspec', '?')}, ray {info.get('ray', 'absent')}. "
        f"Load average (1, 5, 15 min) at the start: {load_at_start}, "
        f"at the end: {info['loadavg_end']}."
    )
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all available)")
    parser.add_argument("--quick", action="store_true", help="smoke-test durations")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per benchmark (median)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    parser.add_argument("--list", action="store_true", help="list benchmarks and exit")
    parser.add_argument("--child", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.child:
        return _child(args.child, args.result, args.rounds, args.quick)

    found = available()
    if args.list:
        sys.stdout.write("".join(f"{n}\t{t}\n" for n, t in found.items()))
        return 0
    names = args.names or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {sorted(found)}")
    timeout = args.timeout or (300.0 if args.quick else 1800.0)

    started = dt.datetime.now()
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    run_id = started.strftime("%Y%m%d-%H%M%S")
    runs = [
        run_benchmark(n, found[n], rounds=args.rounds, quick=args.quick, timeout=timeout)
        for n in names
    ]
    results = summarize(runs)
    report = Report(
        run_id=run_id,
        started=started.isoformat(timespec="seconds"),
        finished=dt.datetime.now().isoformat(timespec="seconds"),
        quick=args.quick,
        rounds=args.rounds,
        machine=machine(load_at_start),
        runs=runs,
        results=results,
        comparisons=compare(results),
    )
    table = markdown(report)
    out = args.out / run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    (out / "results.md").write_text(table)
    log.info("wrote %s", out)
    sys.stdout.write(table)
    return 0 if all(r.status == "ok" and not r.strays for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
