"""Scripted agents (service "agent"): baselines that need no model weights.

Both are stateless: everything is reconstructed from `ActRequest.steps`, so any worker can serve
any turn. They return a structured action and leave `ActReply.text` empty (the scheduler renders
it in the episode's dialect).

- `RandomAgent`: random valid actions (questions from a fixed list, random catalogue exams, a
  random known diagnosis, more likely as the turns go by), seeded per episode id.
- `HeuristicAgent`, a naive-Bayes clinician: a posterior over the built-in bank's conditions from
  the demographics, the chief complaint, the patient's yes/no answers and the exam results; asks
  the symptom question with the highest expected information gain, orders the key exams of the
  leading conditions, and diagnoses the most probable condition when confident or near the turn
  cap. Its knowledge is the condition table of `cases.bank`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import random
from collections.abc import Hashable, Sequence
from typing import Any

import msgspec

from cases.bank import CONDITIONS, SINGLE_COMPLAINT_RATE, Condition
from cases.catalogue import Catalogue, Entry, default_catalogue
from cases.conditions import FEMALE_ONLY, Num, Text
from cases.symptoms import SYMPTOMS, find_symptoms, question_for
from engine.actor import Actor, handles
from protocols.messages import (
    ActReply,
    ActRequest,
    AskPatient,
    Diagnose,
    ExamResults,
    OrderExam,
    PatientAnswer,
    Step,
)

__all__ = [
    "GENERAL_QUESTIONS",
    "HeuristicAgent",
    "HeuristicAgentConfig",
    "RandomAgent",
    "RandomAgentConfig",
    "posterior",
]

DEFAULT_MAX_TURNS = 12

GENERAL_QUESTIONS = (
    "What brings you in today?",
    "When did it start?",
    "How old are you?",
    "Do you have any medical conditions?",
    "What medications do you take?",
    "Do you have any allergies?",
    "Does anything run in your family?",
    "Do you smoke?",
    "How much alcohol do you drink?",
    "What do you do for work?",
    "Have you travelled recently?",
)


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ================================ random ================================


class RandomAgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seed: int = 0
    diagnose_base: float = 0.05  # probability of diagnosing at turn 0 ...
    diagnose_slope: float = 0.08  # ... rising by this much each turn
    ask_probability: float = 0.5  # otherwise order exams
    max_exams: int = 3  # exams per order: 1..max_exams
    default_max_turns: int = DEFAULT_MAX_TURNS  # when the intro gives none


class RandomAgent(Actor):
    """Service "agent": uniformly random valid actions; deterministic per (seed, episode, turn)."""

    service = "agent"
    Config = RandomAgentConfig

    def __init__(self, config: RandomAgentConfig | None = None) -> None:
        super().__init__(config or RandomAgentConfig())
        cat = default_catalogue()
        self._exams = [e.name for e in cat.entries]
        self._questions = [*GENERAL_QUESTIONS, *(question_for(s) for s in SYMPTOMS)]
        self._diagnoses = [c.name for c in CONDITIONS]

    @handles(ActRequest)
    def act(self, request: ActRequest) -> ActReply:
        cfg: RandomAgentConfig = self.config
        turn = len(request.steps)
        rng = random.Random(_seed("random-agent", cfg.seed, request.episode_id, turn))
        max_turns = request.intro.max_turns or cfg.default_max_turns
        p_diagnose = cfg.diagnose_base + cfg.diagnose_slope * turn
        if turn >= max_turns - 1 or rng.random() < p_diagnose:
            name = rng.choice(self._diagnoses)
            action: AskPatient | OrderExam | Diagnose = Diagnose(name=name)
        elif rng.random() < cfg.ask_probability:
            action = AskPatient(question=rng.choice(self._questions))
        else:
            k = rng.randint(1, max(1, cfg.max_exams))
            action = OrderExam(names=rng.sample(self._exams, k))
        return ActReply(text="", action=action)


# ================================ naive Bayes ================================

_SYMPTOM_EPS = 0.02  # P(present) of a symptom the condition does not list
_FLOOR = 1e-4
_INCIDENTAL = 0.04  # routine exams: chance of a mildly abnormal value
_ROBUST = 0.03  # mixture weight of a broad "anything" density
_DERIVED = frozenset({"hematocrit", "chloride", "prothrombin time"})  # computed from other values


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


class _Knowledge:
    """Everything the naive-Bayes clinician knows, precomputed from the condition table."""

    def __init__(self, conditions: Sequence[Condition], cat: Catalogue) -> None:
        self.conditions = list(conditions)
        self.cat = cat
        self.n = len(self.conditions)
        self.prior = [c.weight for c in self.conditions]
        total = sum(self.prior)
        self.prior = [p / total for p in self.prior]
        self.symptoms = list(SYMPTOMS)
        self.question_symptom = {question_for(s): s for s in self.symptoms}
        self.q = {s: [self.p_symptom(c, s) for c in self.conditions] for s in self.symptoms}
        # log P(answer | condition) per symptom, the same floats `_posterior` used to compute
        self.log_yes = {s: [math.log(q) for q in qs] for s, qs in self.q.items()}
        self.log_no = {s: [math.log(1.0 - q) for q in qs] for s, qs in self.q.items()}
        # work shared by turns and episodes: pure functions of their keys, bounded (an entry is
        # about 3 kB: a float per condition), enough for the episodes in flight
        self._base: _LRU = _LRU(1024)  # (age, sex, chief complaint) -> log prior x demographics
        self._terms: _LRU = _LRU(2048)  # (exam, value, text) -> log-likelihood per condition
        self._posteriors: _LRU = _LRU(1024)  # evidence -> posterior
        self._questions: _LRU = _LRU(1024)  # (posterior, asked, complaint, male) -> best question
        self._np_tables: dict[str, Any] | None = None  # built on first use; {} without numpy

    # -- likelihoods --

    def p_symptom(self, cond: Condition, name: str) -> float:
        p = cond.symptoms.get(name)
        if p is None:
            return _SYMPTOM_EPS
        return min(max(p, _SYMPTOM_EPS), 1 - _SYMPTOM_EPS)

    def l_complaint(self, cond: Condition, cc: frozenset[str]) -> float:
        """P(chief complaint | condition) under the bank's rule: a complaint tuple is drawn, and a
        multi-symptom one is reduced to one of its symptoms with `SINGLE_COMPLAINT_RATE`."""
        if not cc:
            return 1.0
        p = 0.0
        for c in cond.complaints:
            if len(c) == 1:
                p += 1.0 if frozenset(c) == cc else 0.0
            else:
                if frozenset(c) == cc:
                    p += 1.0 - SINGLE_COMPLAINT_RATE
                if len(cc) == 1 and next(iter(cc)) in c:
                    p += SINGLE_COMPLAINT_RATE / len(c)
        return max(p / len(cond.complaints), _FLOOR)

    def l_demographics(self, cond: Condition, age: int, sex: str) -> float:
        lo, hi = cond.age
        la = 1.0 / (hi - lo + 1) if lo <= age <= hi else _FLOOR
        if sex == "female":
            ls = max(cond.female, 1e-3)
        elif sex == "male":
            ls = max(1.0 - cond.female, 1e-3)
        else:
            ls = 1.0
        return la * ls

    def l_value(self, cond: Condition, entry: Entry, value: float) -> float:
        """P(observed rounded value | condition), in probability-per-step units."""
        step = 10.0**-entry.decimals
        ref = entry.reference
        lo, hi = ref.low, ref.high
        width = (hi - lo) if lo is not None and hi is not None else abs(hi or lo or 1.0)
        broad = step / (4.0 * width + abs(value))  # a wide flat density
        dist = cond.findings.get(entry.name)
        if isinstance(dist, Num):
            sd = max(dist.sd, step)
            p = math.exp(-0.5 * ((value - dist.mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            p *= step
            if dist.lo is not None and abs(value - dist.lo) <= step:
                p += _phi((dist.lo - dist.mean) / sd)
            if dist.hi is not None and abs(value - dist.hi) <= step:
                p += 1.0 - _phi((dist.hi - dist.mean) / sd)
            return (1 - _ROBUST) * p + _ROBUST * broad
        # not a finding of this condition: healthy value, or an incidental abnormality
        inside = (lo is None or value >= lo) and (hi is None or value <= hi)
        if inside:
            mean, sd = entry.typical or (
                ((lo or 0.0) + (hi if hi is not None else 2 * (lo or 1.0))) / 2,
                width / 6,
            )
            sd = max(sd, step)
            p = math.exp(-0.5 * ((value - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)) * step
            return (1 - _INCIDENTAL) * p + _ROBUST * broad
        near = step / (0.3 * width + step)
        far = (lo is not None and value < lo - 0.4 * width) or (
            hi is not None and value > hi + 0.4 * width
        )
        return _INCIDENTAL * (0.0 if far else near) * 0.5 + _ROBUST * broad

    def l_text(self, cond: Condition, entry: Entry, text: str) -> float:
        normal = entry.normal.lower()
        t = text.strip().lower()
        dist = cond.findings.get(entry.name)
        if isinstance(dist, Text):
            p_abnormal = sum(p for _, p in dist.options)
            if t == normal:
                p = 1.0 - p_abnormal
            else:
                p = sum(p for o, p in dist.options if o.lower() == t)
        else:
            p = 1.0 if t == normal else 0.0
        return 0.98 * p + 0.02 * 0.05

    # -- decisions --

    def gain(self, post: Sequence[float], name: str, active: Sequence[int]) -> float:
        """Expected entropy reduction (bits) from asking about a symptom.

        With a_i = p_i q_i and P = sum a_i, H(post | yes) = log2 P - sum(a_i log2 a_i) / P; the
        same for "no" with 1 - q_i. Only conditions in `active` (non-negligible) are summed.
        """
        q = self.q[name]
        p_yes = s_yes = s_no = 0.0
        for i in active:
            p = post[i]
            a = p * q[i]
            b = p - a
            p_yes += a
            s_yes += a * math.log2(a)
            s_no += b * math.log2(b)
        p_no = 1.0 - p_yes
        h = 0.0
        if p_yes > 0:
            h += p_yes * math.log2(p_yes) - s_yes
        if p_no > 0:
            h += p_no * math.log2(p_no) - s_no
        h_now = -sum(post[i] * math.log2(post[i]) for i in active)
        return h_now - h

    def gains(
        self, post: Sequence[float], names: Sequence[str], active: Sequence[int]
    ) -> list[float]:
        """`gain(post, name, active)` for each of `names`, bit for bit, computed faster.

        Every float is the one `gain` computes: a_i = p_i q_i and b_i = p_i - a_i are IEEE
        products and differences (numpy's are the same), each distinct a log2(a) and b log2(b)
        comes from `math.log2` (a condition's likelihoods take few distinct values, so these are
        few), and the sums over `active` are accumulated in the same order, left to right. The
        current entropy is computed once instead of once per symptom.
        """
        tables = self._tables()
        if tables is None or not active or not names:
            return [self.gain(post, name, active) for name in names]
        np = tables["np"]
        log2 = math.log2
        h_now = -sum(post[i] * math.log2(post[i]) for i in active)
        act = np.asarray(active, dtype=np.intp)
        cols = np.asarray([tables["col"][n] for n in names], dtype=np.intp)
        post_arr = np.asarray(post, dtype=float)
        # the distinct (condition, likelihood) pairs of the active conditions
        sel = tables["by_cond"][act]  # (n_active, width) indices into the pairs, -1 = none
        used = np.unique(sel[sel >= 0])
        pu = post_arr[tables["u_cond"][used]]
        au = pu * tables["u_q"][used]
        bu = pu - au
        ya = [x * log2(x) for x in au.tolist()]
        yb = [x * log2(x) for x in bu.tolist()]
        remap = np.empty(len(tables["u_q"]), dtype=np.intp)
        remap[used] = np.arange(len(used))
        idx = remap[tables["code"][np.ix_(act, cols)]]  # (n_active, n_names)
        p_yes = np.add.accumulate(au[idx], axis=0)[-1].tolist()
        s_yes = np.add.accumulate(np.asarray(ya)[idx], axis=0)[-1].tolist()
        s_no = np.add.accumulate(np.asarray(yb)[idx], axis=0)[-1].tolist()
        out = []
        for py, sy, sn in zip(p_yes, s_yes, s_no, strict=True):
            # as in `gain`, which starts each sum at 0.0
            py, sy, sn = 0.0 + py, 0.0 + sy, 0.0 + sn
            p_no = 1.0 - py
            h = 0.0
            if py > 0:
                h += py * log2(py) - sy
            if p_no > 0:
                h += p_no * log2(p_no) - sn
            out.append(h_now - h)
        return out

    def _tables(self) -> dict[str, Any] | None:
        """The likelihood table as numpy arrays (None without numpy): the distinct likelihoods
        of each condition (`u_cond`, `u_q`), each (condition, symptom)'s index among them
        (`code`), and each condition's indices (`by_cond`, padded with -1)."""
        if self._np_tables is not None:
            return self._np_tables or None
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy comes with the "clinical" extra
            self._np_tables = {}
            return None
        u_cond: list[int] = []
        u_q: list[float] = []
        code = np.empty((self.n, len(self.symptoms)), dtype=np.intp)
        per_cond: list[list[int]] = []
        for i in range(self.n):
            index: dict[float, int] = {}
            for j, s in enumerate(self.symptoms):
                q = self.q[s][i]
                k = index.get(q)
                if k is None:
                    k = index[q] = len(u_q)
                    u_cond.append(i)
                    u_q.append(q)
                code[i, j] = k
            per_cond.append(list(index.values()))
        width = max(len(c) for c in per_cond)
        by_cond = np.full((self.n, width), -1, dtype=np.intp)
        for i, c in enumerate(per_cond):
            by_cond[i, : len(c)] = c
        self._np_tables = {
            "np": np,
            "col": {s: j for j, s in enumerate(self.symptoms)},
            "u_cond": np.asarray(u_cond, dtype=np.intp),
            "u_q": np.asarray(u_q, dtype=float),
            "code": code,
            "by_cond": by_cond,
        }
        return self._np_tables

    # -- cached pieces of the posterior --

    def base_logs(self, age: int, sex: str, cc_text: str) -> tuple[list[float], frozenset[str]]:
        """log prior + log P(demographics) + log P(chief complaint), per condition, and the
        complaint's symptoms."""
        key = (age, sex, cc_text)
        hit = self._base.get(key)
        if hit is None:
            cc = frozenset(_find_symptoms(cc_text))
            logs = []
            for cond, prior in zip(self.conditions, self.prior, strict=True):
                lp = math.log(prior) + math.log(self.l_demographics(cond, age, sex))
                lp += math.log(self.l_complaint(cond, cc))
                logs.append(lp)
            hit = self._base.put(key, (logs, cc))
        return hit

    def answer_logs(self, name: str, present: bool) -> list[float]:
        table = (self.log_yes if present else self.log_no).get(name)
        if table is not None:
            return table
        out = []
        for cond in self.conditions:
            q = self.p_symptom(cond, name)
            out.append(math.log(q if present else 1.0 - q))
        return out

    def result_logs(self, name: str, value: float | None, text: str) -> list[float] | None:
        """log P(result | condition) per condition, or None if the result is not evidence."""
        key = (name, value, text)
        hit = self._terms.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[no-any-return]
        out: list[float] | None = None
        if name not in _DERIVED and name in self.cat:
            entry = self.cat.get(name)
            if not entry.is_panel:
                if entry.is_numeric and value is not None:
                    out = [
                        math.log(max(self.l_value(cond, entry, value), 1e-300))
                        for cond in self.conditions
                    ]
                elif not entry.is_numeric:
                    out = [math.log(self.l_text(cond, entry, text)) for cond in self.conditions]
        return self._terms.put(key, out)  # type: ignore[no-any-return]


_MISSING = object()
_reduce = functools.reduce


class _LRU:
    """A bounded least-recently-used cache (a dict in use order)."""

    __slots__ = ("data", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.data: dict[Hashable, Any] = {}

    def get(self, key: Hashable, default: Any = None) -> Any:
        data = self.data
        try:
            value = data.pop(key)
        except KeyError:
            return default
        data[key] = value
        return value

    def put(self, key: Hashable, value: Any) -> Any:
        data = self.data
        data.pop(key, None)
        data[key] = value
        while len(data) > self.maxsize:
            try:
                del data[next(iter(data))]
            except (KeyError, StopIteration, RuntimeError):  # pragma: no cover - defensive
                break
        return value


@functools.lru_cache(maxsize=4096)
def _find_symptoms_cached(text: str) -> tuple[str, ...]:
    return tuple(find_symptoms(text))


def _find_symptoms(text: str) -> tuple[str, ...]:
    return _find_symptoms_cached(text)


@functools.cache
def _knowledge() -> _Knowledge:
    return _Knowledge(CONDITIONS, default_catalogue())


class _Evidence(msgspec.Struct):
    asked: set[str]
    answers: dict[str, bool]
    ordered: set[str]
    results: list[tuple[str, float | None, str]]
    spent: float
    questions: int
    exam_rounds: int


def _gather(steps: Sequence[Step], kb: _Knowledge) -> _Evidence:
    ev = _Evidence(set(), {}, set(), [], 0.0, 0, 0)
    for step in steps:
        action, obs = step.action, step.observation
        if isinstance(action, AskPatient):
            ev.questions += 1
            name = kb.question_symptom.get(action.question)
            if name is None:
                found = _find_symptoms(action.question)
                name = found[0] if len(found) == 1 else None
            if name is not None:
                ev.asked.add(name)
                if isinstance(obs, PatientAnswer):
                    text = obs.text.strip().lower()
                    if text.startswith("yes"):
                        ev.answers[name] = True
                    elif text.startswith("no"):
                        ev.answers[name] = False
        elif isinstance(action, OrderExam):
            ev.exam_rounds += 1
            for name in action.names:
                entry = kb.cat.match(name)
                if entry is not None:
                    ev.ordered.add(entry.name)
            if isinstance(obs, ExamResults):
                ev.spent += obs.cost
                for r in obs.results:
                    if r.found and r.name:
                        ev.ordered.add(r.name)
                        ev.results.append((r.name, r.value, r.result))
    return ev


def posterior(
    steps: Sequence[Step], age: int, sex: str, chief_complaint: str
) -> list[tuple[str, float]]:
    """The naive-Bayes posterior over the bank's conditions, most probable first."""
    kb = _knowledge()
    post = _posterior(kb, _gather(steps, kb), age, sex, chief_complaint)
    ranked = sorted(zip(kb.conditions, post, strict=True), key=lambda cp: -cp[1])
    return [(c.name, p) for c, p in ranked]


def _posterior(kb: _Knowledge, ev: _Evidence, age: int, sex: str, cc_text: str) -> list[float]:
    key = (age, sex, cc_text, tuple(ev.answers.items()), tuple(ev.results))
    hit = kb._posteriors.get(key)
    if hit is not None:
        return list(hit)
    base, cc = kb.base_logs(age, sex, cc_text)
    # per condition: the base, then each answer, then each result, added in that order
    logs = base
    add = operator.add
    for name, present in ev.answers.items():
        if name in cc:
            continue
        logs = list(map(add, logs, kb.answer_logs(name, present)))
    for name, value, text in ev.results:
        terms = kb.result_logs(name, value, text)
        if terms is not None:
            logs = list(map(add, logs, terms))
    top = max(logs)
    weights = [math.exp(x - top) for x in logs]
    total = sum(weights)
    post = [w / total for w in weights]
    kb._posteriors.put(key, tuple(post))
    return post


class HeuristicAgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    confident: float = 0.9  # diagnose once the leading condition is this probable (and its
    #   key exams are done, or no more exams can be ordered)
    order_exams_at: float = 0.95  # order key exams once the leading condition is this probable
    max_questions: int = 8  # ... or after this many questions, or when questions stop paying
    exam_mass: float = 0.9  # order key exams of the leading conditions covering this mass ...
    max_exam_conditions: int = 2  # ... but of at most this many conditions per order
    max_exam_rounds: int = 2
    max_exams_per_order: int = 8  # the scheduler's default limit per order
    min_gain: float = 0.05  # bits: a question worth less than this is not asked
    differential: int = 3  # alternative diagnoses listed with the diagnosis
    default_max_turns: int = DEFAULT_MAX_TURNS  # when the intro gives none


class HeuristicAgent(Actor):
    """Service "agent": the naive-Bayes clinician (deterministic, stateless)."""

    service = "agent"
    Config = HeuristicAgentConfig

    def __init__(self, config: HeuristicAgentConfig | None = None) -> None:
        super().__init__(config or HeuristicAgentConfig())
        self.kb = _knowledge()

    @handles(ActRequest)
    def act(self, request: ActRequest) -> ActReply:
        return ActReply(text="", action=self.decide(request))

    def decide(self, request: ActRequest) -> AskPatient | OrderExam | Diagnose:
        cfg: HeuristicAgentConfig = self.config
        kb = self.kb
        intro = request.intro
        ev = _gather(request.steps, kb)
        post = _posterior(kb, ev, intro.age, intro.sex, intro.chief_complaint)
        ranked = sorted(range(kb.n), key=lambda i: -post[i])
        best = kb.conditions[ranked[0]]
        p_best = post[ranked[0]]
        turn = len(request.steps)
        max_turns = intro.max_turns or cfg.default_max_turns
        remaining = max_turns - turn  # turns left, this one included

        def diagnose() -> Diagnose:
            others = [
                kb.conditions[i].name for i in ranked[1 : 1 + cfg.differential] if post[i] > 0.01
            ]
            return Diagnose(name=best.name, differential=others)

        if remaining <= 1:
            return diagnose()
        exams = self._exams_to_order(post, ranked, ev, intro.budget)
        pending = [k for k in best.key_exams if k not in ev.ordered]
        can_order = bool(exams) and ev.exam_rounds < cfg.max_exam_rounds
        if p_best >= cfg.confident and (not pending or not can_order):
            return diagnose()
        question, gain = self._best_question(post, ev, intro.chief_complaint, intro.sex)
        wants_exams = (
            p_best >= cfg.order_exams_at
            or ev.questions >= cfg.max_questions
            or remaining <= 2
            or gain < cfg.min_gain
        )
        if wants_exams and can_order:
            return OrderExam(names=exams)
        if question is not None and gain >= 1e-3 and ev.questions < 2 * cfg.max_questions:
            return AskPatient(question=question_for(question))
        if can_order:
            return OrderExam(names=exams)
        return diagnose()

    def _best_question(
        self, post: list[float], ev: _Evidence, cc_text: str, sex: str
    ) -> tuple[str | None, float]:
        kb = self.kb
        male = sex == "male"
        key = (tuple(post), frozenset(ev.asked), cc_text, male)
        hit = kb._questions.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        cc = set(_find_symptoms(cc_text))
        active = [i for i, p in enumerate(post) if p > 1e-9]
        names = [
            name
            for name in kb.symptoms
            if not (name in ev.asked or name in cc or (male and name in FEMALE_ONLY))
        ]
        best, best_gain = None, -1.0
        for name, g in zip(names, kb.gains(post, names, active), strict=True):
            if g > best_gain + 1e-12:
                best, best_gain = name, g
        return kb._questions.put(key, (best, max(best_gain, 0.0)))  # type: ignore[no-any-return]

    def _exams_to_order(
        self, post: list[float], ranked: list[int], ev: _Evidence, budget: float
    ) -> list[str]:
        cfg: HeuristicAgentConfig = self.config
        kb = self.kb
        names: list[str] = []
        mass = 0.0
        for i in ranked[: cfg.max_exam_conditions]:
            for k in kb.conditions[i].key_exams:
                if k not in ev.ordered and k not in names:
                    names.append(k)
            mass += post[i]
            if mass >= cfg.exam_mass:
                break
        names = names[: max(1, cfg.max_exams_per_order)]
        if budget > 0:
            left = budget - ev.spent
            affordable = []
            for k in names:
                cost = kb.cat.get(k).cost
                if cost <= left:
                    affordable.append(k)
                    left -= cost
            names = affordable
        return names
