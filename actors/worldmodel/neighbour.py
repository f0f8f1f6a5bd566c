"""A non-parametric world model: exam results sampled from similar cases of a reference bank.

`NeighbourModel(cases, catalogue)` indexes a bank once (pure Python). For an exam a case lacks,
`sample(case, entry, earlier, reveal_diagnosis, rng)` looks at the bank cases that hold the exam and
ranks them by a distance made of

- profile: age (|difference| / 30), sex, chief complaint and present symptoms (1 - Jaccard);
- diagnosis: with `reveal_diagnosis` 0 for the same diagnosis (0.5 for the same specialty), else 1;
  without it, 1 - P(neighbour's diagnosis | evidence), where P is a naive-Bayes posterior over the
  bank's diagnoses from the case's present and denied symptoms and the flags (low/high/abnormal)
  of the earlier results;
- earlier results: for the numeric exams both hold, the mean |difference| of values z-scored by the
  catalogue's healthy distribution (capped at 3); for qualitative ones, the share that differ.

Numeric results: a kernel-weighted pick among the `k` nearest cases that report the exam in the
catalogue's unit, plus a small jitter (a quarter of the neighbours' weighted spread), clamped to the
neighbours' range and rounded as the catalogue says. Report-type results (imaging, microbiology,
physical findings, qualitative labs) are copied from the nearest case. The examined case itself is
never its own neighbour (excluded by id). Everything is deterministic given the `rng` passed in.

The index is held as numpy arrays (numpy imported lazily, on first use) so a query costs
a few vectorised operations over the cases that hold the exam.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from cases.catalogue import Catalogue, Entry, flag
from protocols.case import Case, ExamRecord
from protocols.messages import ExamResult

__all__ = ["NeighbourModel", "case_records", "healthy_scale", "zscore"]

W_AGE = 0.5
W_SEX = 0.5
W_SYMPTOMS = 1.0
W_DIAGNOSIS = 2.0
W_NUMERIC = 1.5
W_TEXT = 0.5
Z_CAP = 3.0


def healthy_scale(entry: Entry) -> tuple[float, float]:
    """(mean, sd) of a numeric exam in health: the catalogue's `typical`, else from its range."""
    if entry.typical is not None:
        mean, sd = entry.typical
        return mean, sd if sd > 0 else 1.0
    lo, hi = entry.reference.low, entry.reference.high
    if lo is not None and hi is not None:
        return (lo + hi) / 2, max((hi - lo) / 4, 1e-6)
    if hi is not None:
        return hi * 0.5, max(abs(hi) * 0.25, 1e-6)
    lo = lo or 0.0
    return lo * 1.2, max(abs(lo) * 0.2, 1e-6) if lo else 1.0


def zscore(entry: Entry, value: float) -> float:
    mean, sd = healthy_scale(entry)
    return (value - mean) / sd


def case_records(catalogue: Catalogue, case: Case) -> dict[str, ExamRecord]:
    """The case's records by canonical catalogue name (the earliest record of each exam)."""
    out: dict[str, ExamRecord] = {}
    for rec in sorted(case.exams, key=lambda r: r.time_offset_h):
        if rec.name in catalogue:
            name = rec.name
        else:
            entry = catalogue.match(rec.name)
            name = entry.name if entry is not None else rec.name
        out.setdefault(name, rec)
    return out


def _flag_of(entry: Entry, value: float | None, text: str) -> str:
    if entry.is_numeric and value is not None:
        return f"{entry.name}:{flag(entry, value) or 'normal'}"
    normal = entry.normal or entry.reference.text
    if not normal:
        return ""
    return f"{entry.name}:{'normal' if text.strip().lower() == normal.lower() else 'abnormal'}"


class _Item:
    __slots__ = ("id", "age", "sex", "symptoms", "dx", "specialty", "z", "text", "records")

    def __init__(self, catalogue: Catalogue, case: Case) -> None:
        p = case.profile
        self.id = case.id
        self.age = p.demographics.age
        self.sex = p.demographics.sex
        self.symptoms = _symptom_set(case)
        self.dx = case.diagnosis.name.strip().lower()
        self.specialty = case.specialty
        self.records = case_records(catalogue, case)
        self.z: dict[str, float] = {}
        self.text: dict[str, str] = {}
        for name, rec in self.records.items():
            if name not in catalogue:
                continue
            entry = catalogue.get(name)
            if entry.is_numeric and rec.value is not None and rec.unit in ("", entry.unit):
                self.z[name] = zscore(entry, rec.value)
            else:
                self.text[name] = rec.result.strip().lower()

    def flags(self, catalogue: Catalogue) -> set[str]:
        out = set()
        for name, rec in self.records.items():
            if name in catalogue:
                f = _flag_of(catalogue.get(name), rec.value, rec.result)
                if f:
                    out.add(f)
        return out


def _symptom_set(case: Case) -> frozenset[str]:
    p = case.profile
    names = {s.name.strip().lower() for s in p.symptoms if s.present}
    if p.chief_complaint:
        names.add("cc:" + p.chief_complaint.strip().lower())
    return frozenset(names)


class _Evidence:
    """What the world model conditions on for one query, precomputed once."""

    __slots__ = ("age", "sex", "symptoms", "z", "text", "dx", "specialty", "posterior")

    def __init__(self) -> None:
        self.age = 0
        self.sex = ""
        self.symptoms: frozenset[str] = frozenset()
        self.z: dict[str, float] = {}
        self.text: dict[str, str] = {}
        self.dx = ""  # set only when the diagnosis is revealed
        self.specialty = ""
        self.posterior: dict[str, float] = {}


class NeighbourModel:
    """The index over a reference bank; build once, query many times (read-only, thread-safe)."""

    def __init__(self, cases: Iterable[Case], catalogue: Catalogue, k: int = 10) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.catalogue = catalogue
        self.k = k
        self.items = [_Item(catalogue, c) for c in cases]
        self._row = {item.id: r for r, item in enumerate(self.items)}
        self._np: Any = None
        self._posteriors: dict[tuple[frozenset[str], ...], dict[str, float]] = {}
        self.by_exam: dict[str, list[_Item]] = defaultdict(list)
        for item in self.items:
            for name in item.records:
                self.by_exam[name].append(item)
        # naive-Bayes tables for the diagnosis estimate
        self._dx_count: Counter[str] = Counter(i.dx for i in self.items)
        self._sym_count: dict[str, Counter[str]] = defaultdict(Counter)
        self._flag_count: dict[str, Counter[str]] = defaultdict(Counter)
        self._exam_count: dict[str, Counter[str]] = defaultdict(Counter)
        for item in self.items:
            self._sym_count[item.dx].update(item.symptoms)
            self._flag_count[item.dx].update(item.flags(catalogue))
            self._exam_count[item.dx].update(list(item.records))

    def __len__(self) -> int:
        return len(self.items)

    # -- conditioning --

    def evidence(
        self, case: Case, earlier: Sequence[ExamResult], reveal_diagnosis: bool
    ) -> _Evidence:
        ev = _Evidence()
        d = case.profile.demographics
        ev.age, ev.sex = d.age, d.sex
        ev.symptoms = _symptom_set(case)
        flags: set[str] = set()
        for r in earlier:
            if not r.found or not r.name or r.name not in self.catalogue:
                continue
            entry = self.catalogue.get(r.name)
            if entry.is_panel:
                continue
            if entry.is_numeric and r.value is not None and r.unit in ("", entry.unit):
                ev.z[entry.name] = zscore(entry, r.value)
            else:
                ev.text[entry.name] = r.result.strip().lower()
            f = _flag_of(entry, r.value, r.result)
            if f:
                flags.add(f)
        if reveal_diagnosis:
            ev.dx = case.diagnosis.name.strip().lower()
            ev.specialty = case.specialty
        else:
            denied = {s.name.strip().lower() for s in case.profile.symptoms if not s.present}
            key = (ev.symptoms, frozenset(denied), frozenset(flags))
            post = self._posteriors.get(key)
            if post is None:
                post = self.diagnosis_posterior(*key)
                if len(self._posteriors) >= 4096:
                    self._posteriors.clear()
                self._posteriors[key] = post
            ev.posterior = post
        return ev

    def diagnosis_posterior(
        self, present: Iterable[str], denied: Iterable[str], flags: Iterable[str]
    ) -> dict[str, float]:
        """P(diagnosis | evidence) over the bank's diagnoses (naive Bayes, Laplace smoothing)."""
        total = sum(self._dx_count.values())
        if not total:
            return {}
        present, denied, flags = list(present), list(denied), list(flags)
        logs: dict[str, float] = {}
        for dx, n in self._dx_count.items():
            syms = self._sym_count[dx]
            lp = math.log(n / total)
            for s in present:
                lp += math.log((syms[s] + 0.5) / (n + 1))
            for s in denied:
                lp += math.log((n - syms[s] + 0.5) / (n + 1))
            fl, ex = self._flag_count[dx], self._exam_count[dx]
            for f in flags:
                name = f.rpartition(":")[0]
                lp += math.log((fl[f] + 0.5) / (ex[name] + 1.5))
            logs[dx] = lp
        top = max(logs.values())
        weights = {dx: math.exp(lp - top) for dx, lp in logs.items()}
        z = sum(weights.values())
        return {dx: w / z for dx, w in weights.items()}

    def _arrays(self) -> Any:
        """The index as numpy arrays, built on first use (numpy is imported lazily)."""
        if self._np is not None:
            return self._np
        import numpy as np

        items = self.items
        ids = [i.id for i in items]
        rank = {cid: r for r, cid in enumerate(sorted(ids))}
        sym_vocab = {s: j for j, s in enumerate(sorted({s for i in items for s in i.symptoms}))}
        num_cols = {n: j for j, n in enumerate(sorted({n for i in items for n in i.z}))}
        text_cols = {n: j for j, n in enumerate(sorted({n for i in items for n in i.text}))}
        dx_codes = {d: j for j, d in enumerate(sorted({i.dx for i in items}))}
        sp_codes = {d: j for j, d in enumerate(sorted({i.specialty for i in items}))}
        n = len(items)
        sym = np.zeros((n, max(len(sym_vocab), 1)), dtype=np.float32)
        z = np.full((n, max(len(num_cols), 1)), np.nan)
        text = np.full((n, max(len(text_cols), 1)), -1, dtype=np.int64)
        text_codes: dict[str, dict[str, int]] = defaultdict(dict)
        for r, item in enumerate(items):
            for s_ in item.symptoms:
                sym[r, sym_vocab[s_]] = 1.0
            for name, v in item.z.items():
                z[r, num_cols[name]] = v
            for name, t in item.text.items():
                codes = text_codes[name]
                text[r, text_cols[name]] = codes.setdefault(t, len(codes))
        rows: dict[str, Any] = {}
        for name, members in self.by_exam.items():
            entry = self.catalogue.get(name) if name in self.catalogue else None
            keep = [
                self._row[m.id]
                for m in members
                if entry is None
                or not entry.is_numeric
                or (m.records[name].value is not None and m.records[name].unit in ("", entry.unit))
            ]
            rows[name] = np.asarray(keep, dtype=np.int64)
        self._np = {
            "np": np,
            "ids": ids,
            "rank": np.asarray([rank[c] for c in ids]),
            "age": np.asarray([i.age for i in items], dtype=float),
            "sex": [i.sex for i in items],
            "sex_arr": np.asarray([i.sex for i in items], dtype=object),
            "dx": np.asarray([dx_codes[i.dx] for i in items]),
            "dx_codes": dx_codes,
            "sp": np.asarray([sp_codes[i.specialty] for i in items]),
            "sp_codes": sp_codes,
            "sym": sym,
            "sym_n": sym.sum(axis=1),
            "sym_vocab": sym_vocab,
            "z": z,
            "num_cols": num_cols,
            "text": text,
            "text_cols": text_cols,
            "text_codes": text_codes,
            "rows": rows,
        }
        return self._np

    def _distances(self, ev: _Evidence, rows: Any) -> Any:
        a = self._arrays()
        np = a["np"]
        d = W_AGE * np.minimum(np.abs(a["age"][rows] - ev.age) / 30.0, 2.0)
        d += W_SEX * (a["sex_arr"][rows] != ev.sex)
        q = np.zeros(a["sym"].shape[1], dtype=np.float32)
        unknown = 0
        for s_ in ev.symptoms:
            j = a["sym_vocab"].get(s_)
            if j is None:
                unknown += 1
            else:
                q[j] = 1.0
        inter = a["sym"][rows] @ q
        union = len(ev.symptoms) + a["sym_n"][rows] - inter
        jac = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
        d += W_SYMPTOMS * (1.0 - jac)
        if ev.dx:
            code = a["dx_codes"].get(ev.dx, -1)
            sp = a["sp_codes"].get(ev.specialty, -1)
            term = np.where(a["dx"][rows] == code, 0.0, np.where(a["sp"][rows] == sp, 0.5, 1.0))
            d += W_DIAGNOSIS * term
        elif ev.posterior:
            p = np.zeros(len(a["dx_codes"]))
            for dx, j in a["dx_codes"].items():
                p[j] = ev.posterior.get(dx, 0.0)
            d += W_DIAGNOSIS * (1.0 - p[a["dx"][rows]])
        cols = [(a["num_cols"][n], z) for n, z in ev.z.items() if n in a["num_cols"]]
        if cols:
            sub = a["z"][np.ix_(rows, [c for c, _ in cols])]
            diff = np.minimum(np.abs(sub - np.asarray([z for _, z in cols])), Z_CAP)
            count = (~np.isnan(diff)).sum(axis=1)
            total = np.nansum(diff, axis=1)
            d += np.where(count > 0, W_NUMERIC * total / (np.maximum(count, 1) * Z_CAP), 0.0)
        tcols = [
            (a["text_cols"][n], a["text_codes"][n].get(t, -2))
            for n, t in ev.text.items()
            if n in a["text_cols"]
        ]
        if tcols:
            sub = a["text"][np.ix_(rows, [c for c, _ in tcols])]
            valid = sub >= 0
            same = (sub == np.asarray([t for _, t in tcols])) & valid
            count = valid.sum(axis=1)
            d += np.where(count > 0, W_TEXT * (1.0 - same.sum(axis=1) / np.maximum(count, 1)), 0.0)
        return d

    def neighbours(
        self,
        case: Case,
        exam: str,
        earlier: Sequence[ExamResult] = (),
        reveal_diagnosis: bool = False,
        k: int | None = None,
    ) -> list[tuple[float, str, ExamRecord]]:
        """The `k` nearest bank cases holding canonical exam `exam`: (distance, case id, record)."""
        entry = self.catalogue.get(exam)
        a = self._arrays()
        np = a["np"]
        rows = a["rows"].get(entry.name)
        if rows is None or not len(rows):
            return []
        own = self._row.get(case.id)
        if own is not None:
            rows = rows[rows != own]  # never the examined case itself
            if not len(rows):
                return []
        ev = self.evidence(case, earlier, reveal_diagnosis)
        d = self._distances(ev, rows)
        order = np.lexsort((a["rank"][rows], d))[: k or self.k]
        out = []
        for o in order:
            r = int(rows[o])
            item = self.items[r]
            out.append((float(d[o]), item.id, item.records[entry.name]))
        return out

    # -- sampling --

    def sample(
        self,
        case: Case,
        entry: Entry,
        earlier: Sequence[ExamResult],
        reveal_diagnosis: bool,
        rng: random.Random,
    ) -> ExamRecord | None:
        """A result for single exam `entry`, or None when no bank case holds it."""
        near = self.neighbours(case, entry.name, earlier, reveal_diagnosis)
        if not near:
            return None
        if not entry.is_numeric:
            rec = near[0][2]
            return ExamRecord(
                name=entry.name,
                category=entry.category,
                result=rec.result,
                reference=entry.reference,
            )
        dists = [d for d, _, _ in near]
        values = [float(r.value) for _, _, r in near]  # type: ignore[arg-type]
        d0 = dists[0]
        h = max(sorted(dists)[len(dists) // 2] - d0, 0.05)
        weights = [math.exp(-(d - d0) / h) for d in dists]
        wsum = sum(weights)
        mean = sum(w * v for w, v in zip(weights, values, strict=True)) / wsum
        var = sum(w * (v - mean) ** 2 for w, v in zip(weights, values, strict=True)) / wsum
        pick = rng.choices(range(len(values)), weights=weights)[0]
        value = values[pick] + rng.gauss(0.0, 0.25 * math.sqrt(var))
        value = min(max(value, min(values)), max(values))
        return self.catalogue.record(entry, value=value)
