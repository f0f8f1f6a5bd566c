"""The Examiner: exam results from a chain of backends (`record` -> `neighbour` -> `normal`).

The requested name is matched to the exam catalogue. Not in the catalogue: `found=False` and no
cost (the episode goes on). Otherwise each backend of `chain` is asked in turn until one answers:

- `record`: the case's own result (a panel: each component's);
- `neighbour`: a non-parametric world model (`actors.worldmodel.neighbour`) over a reference bank
  (default the built-in bank, 2,000 cases, seed 0), built once at `start()`; the examined case is
  excluded from its own neighbours by id;
- `llm`: DiagGym's world-model prompt (`actors.worldmodel.diaggym`) through transformers in process
  or an OpenAI-compatible completions endpoint; a failure passes on to the next backend (logged),
  or is an `ActorError` when `llm` is last;
- `normal`: a value within the reference range (always answers);
- `none`: "not available" (always answers).

A panel is answered component by component, each through the chain; its `source` joins the
backends that answered ("neighbour+record"). `ExamQuery.reveal_diagnosis` (off by default, set by
the scheduler's rules) decides whether the world models may condition on the final diagnosis.
Results are deterministic per (seed, case id, exam, earlier results), so a retried request gets the
same answer; `normal` depends on (case id, exam) only. The cost always comes from the catalogue.

`RecordExaminer` is the old record-then-fallback examiner (`fallback = "normal" | "none"`), kept
for existing specs: an `Examiner` whose chain is `["record", fallback]`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from actors.openai_api import EndpointConfig
from actors.worldmodel.neighbour import NeighbourModel, case_records
from cases.catalogue import Catalogue, Entry, default_catalogue
from engine.actor import Actor, ActorError, ConfigError, handles
from protocols import ErrorCode
from protocols.case import Case, ExamRecord
from protocols.messages import ExamQuery, ExamReply, ExamResult

__all__ = [
    "BACKENDS",
    "Examiner",
    "ExaminerConfig",
    "LLMConfig",
    "RecordExaminer",
    "RecordExaminerConfig",
]

log = structlog.get_logger("actors.examiner")

BACKENDS = ("record", "neighbour", "llm", "normal", "none")
FALLBACKS = ("normal", "none")
RUNNERS = ("completions", "transformers")


class LLMConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    runner: str = "completions"  # completions (vllm serve of the DiagGym weights) | transformers
    endpoint: EndpointConfig | None = None  # for "completions"
    model_path: str = ""  # for "transformers": a local directory (never a hub download)
    temperature: float = 1.0  # DiagGym samples at 1.0
    max_tokens: int = 256


class ExaminerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    chain: list[str] = msgspec.field(default_factory=lambda: ["record", "neighbour", "normal"])
    bank: str = "cases.bank:builtin"  # import string of the neighbour model's reference bank
    bank_args: dict[str, Any] = msgspec.field(default_factory=lambda: {"n": 2000, "seed": 0})
    k: int = 10  # neighbours a numeric value is drawn from
    seed: int = 0
    llm: LLMConfig | None = None


class RecordExaminerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fallback: str = "normal"  # normal | none: what an exam the case does not hold returns


def _check_chain(chain: Sequence[str], where: str) -> None:
    if not chain:
        raise ConfigError(f"{where}: chain is empty")
    for b in chain:
        if b not in BACKENDS:
            raise ConfigError(f"{where}: unknown backend {b!r} in chain (one of {BACKENDS})")
    if len(set(chain)) != len(chain):
        raise ConfigError(f"{where}: chain {list(chain)} names a backend twice")


def _key(*parts: object) -> str:
    return ":".join(str(p) for p in parts)


def earlier_key(earlier: Sequence[ExamResult]) -> str:
    h = hashlib.sha256()
    for r in earlier:
        h.update(f"{r.name or r.requested}\x1f{r.result}\x1e".encode())
    return h.hexdigest()[:16]


class Examiner(Actor):
    """Service "examiner": `ExamQuery` -> `ExamReply`, answered by a chain of backends."""

    service = "examiner"
    Config = ExaminerConfig

    def __init__(
        self,
        config: ExaminerConfig | None = None,
        *,
        index: Sequence[Case] | None = None,
        runner: Any = None,
    ) -> None:
        config = config or ExaminerConfig()
        super().__init__(config)
        self._cfg = config
        self.chain: list[str] = list(config.chain)
        _check_chain(self.chain, type(self).__name__)
        if config.k < 1:
            raise ConfigError(f"{type(self).__name__}: k must be >= 1, got {config.k}")
        llm = config.llm
        if "llm" in self.chain and runner is None:
            if llm is None:
                raise ConfigError(f"{type(self).__name__}: chain has 'llm' but no [llm] table")
            if llm.runner not in RUNNERS:
                raise ConfigError(f"{type(self).__name__}: llm.runner must be one of {RUNNERS}")
            if llm.runner == "completions" and llm.endpoint is None:
                raise ConfigError(f"{type(self).__name__}: llm.runner 'completions' needs endpoint")
            if llm.runner == "transformers" and not llm.model_path:
                raise ConfigError(
                    f"{type(self).__name__}: llm.runner 'transformers' needs model_path"
                )
        self.catalogue: Catalogue = default_catalogue()
        self._index_cases = list(index) if index is not None else None
        self.model: NeighbourModel | None = None
        self.runner = runner

    # -- lifecycle --

    def build_index(self) -> NeighbourModel:
        if self.model is None:
            cases = self._index_cases
            if cases is None:
                from engine.worker import resolve

                make = resolve(self._cfg.bank)
                cases = list(make(**self._cfg.bank_args))
            self.model = NeighbourModel(cases, self.catalogue, k=self._cfg.k)
        return self.model

    def build_runner(self) -> Any:
        if self.runner is None and "llm" in self.chain:
            from actors.worldmodel.diaggym import CompletionsRunner, TransformersRunner

            llm = self._cfg.llm
            assert llm is not None
            if llm.runner == "completions":
                from actors.openai_api import OpenAIEndpoint

                assert llm.endpoint is not None
                self.runner = CompletionsRunner(
                    OpenAIEndpoint(llm.endpoint), llm.temperature, llm.max_tokens
                )
            else:
                self.runner = TransformersRunner(
                    model_path=llm.model_path,
                    temperature=llm.temperature,
                    max_new_tokens=llm.max_tokens,
                )
        return self.runner

    async def start(self) -> None:
        import trio

        if "neighbour" in self.chain:
            await trio.to_thread.run_sync(self.build_index)
        if "llm" in self.chain:
            await trio.to_thread.run_sync(self.build_runner)

    async def close(self) -> None:
        if self.runner is not None and hasattr(self.runner, "aclose"):
            await self.runner.aclose()

    def handlers(self) -> dict[type, Any]:
        if "llm" in self.chain:
            return {ExamQuery: self.aresult}
        return super().handlers()

    # -- requests --

    @handles(ExamQuery)
    def result(self, request: ExamQuery) -> ExamReply:
        return ExamReply(
            result=self.lookup(
                request.case, request.exam, request.earlier, request.reveal_diagnosis
            )
        )

    async def aresult(self, request: ExamQuery) -> ExamReply:
        return ExamReply(
            result=await self.alookup(
                request.case, request.exam, request.earlier, request.reveal_diagnosis
            )
        )

    def lookup(
        self,
        case: Case,
        exam: str,
        earlier: Sequence[ExamResult] = (),
        reveal_diagnosis: bool = False,
    ) -> ExamResult:
        """Answer synchronously (a chain without `llm`)."""
        if "llm" in self.chain:
            raise ActorError(ErrorCode.BAD_REQUEST, "an llm chain is answered by alookup()")
        entry = self.catalogue.match(exam)
        if entry is None:
            return self._not_found(exam)
        records = case_records(self.catalogue, case)
        own = records.get(entry.name)
        if (own is not None and "record" in self.chain) or not entry.is_panel:
            rec, src = self._answer(case, entry, records, earlier, reveal_diagnosis)
            return self._single(exam, entry, rec, src)
        parts = [
            (
                comp,
                *self._answer(case, self.catalogue.get(comp), records, earlier, reveal_diagnosis),
            )
            for comp in entry.panel
        ]
        return self._panel(exam, entry, parts)

    async def alookup(
        self,
        case: Case,
        exam: str,
        earlier: Sequence[ExamResult] = (),
        reveal_diagnosis: bool = False,
    ) -> ExamResult:
        """Answer through the whole chain, `llm` included."""
        entry = self.catalogue.match(exam)
        if entry is None:
            return self._not_found(exam)
        records = case_records(self.catalogue, case)
        own = records.get(entry.name)
        if (own is not None and "record" in self.chain) or not entry.is_panel:
            rec, src = await self._aanswer(case, entry, records, earlier, reveal_diagnosis)
            return self._single(exam, entry, rec, src)
        parts = []
        for comp in entry.panel:
            c = self.catalogue.get(comp)
            parts.append((comp, *await self._aanswer(case, c, records, earlier, reveal_diagnosis)))
        return self._panel(exam, entry, parts)

    # -- backends --

    def _answer(
        self,
        case: Case,
        entry: Entry,
        records: dict[str, ExamRecord],
        earlier: Sequence[ExamResult],
        reveal: bool,
    ) -> tuple[ExamRecord, str]:
        for backend in self.chain:
            rec = self._sync_backend(backend, case, entry, records, earlier, reveal)
            if rec is not None:
                return rec, backend
        return self._unavailable(entry), "none"

    async def _aanswer(
        self,
        case: Case,
        entry: Entry,
        records: dict[str, ExamRecord],
        earlier: Sequence[ExamResult],
        reveal: bool,
    ) -> tuple[ExamRecord, str]:
        for i, backend in enumerate(self.chain):
            if backend == "llm":
                last = i == len(self.chain) - 1
                try:
                    return await self._llm(case, entry, earlier, reveal), "llm"
                except Exception as exc:  # noqa: BLE001 - any runner failure falls through
                    if last:
                        raise ActorError(
                            ErrorCode.WORKER_FAILED, f"examiner llm backend failed: {exc}"
                        ) from exc
                    log.warning(
                        "examiner llm backend failed; next in chain",
                        case=case.id,
                        exam=entry.name,
                        error=str(exc),
                        next=self.chain[i + 1],
                    )
                    continue
            rec = self._sync_backend(backend, case, entry, records, earlier, reveal)
            if rec is not None:
                return rec, backend
        return self._unavailable(entry), "none"

    def _sync_backend(
        self,
        backend: str,
        case: Case,
        entry: Entry,
        records: dict[str, ExamRecord],
        earlier: Sequence[ExamResult],
        reveal: bool,
    ) -> ExamRecord | None:
        if backend == "record":
            return records.get(entry.name)
        if backend == "neighbour":
            if entry.is_panel:
                return None
            rng = random.Random(
                _key("dxsim-neighbour", self._cfg.seed, case.id, entry.name, reveal)
                + earlier_key(earlier)
            )
            return self.build_index().sample(case, entry, earlier, reveal, rng)
        if backend == "normal":
            rng = random.Random(f"dxsim-normal:{case.id}:{entry.name}")
            return self.catalogue.normal_result(entry, rng)
        if backend == "none":
            return self._unavailable(entry)
        return None

    async def _llm(
        self, case: Case, entry: Entry, earlier: Sequence[ExamResult], reveal: bool
    ) -> ExamRecord:
        from actors.worldmodel.diaggym import diaggym_prompt, parse_result, past_event

        runner = self.build_runner()
        events = [
            past_event(r, self.catalogue.get(r.name) if r.name in self.catalogue else None)
            for r in earlier
            if r.found
        ]
        prompt = diaggym_prompt(case, entry.name, events, reveal)
        digest = hashlib.sha256(
            _key(
                "dxsim-llm", self._cfg.seed, case.id, entry.name, reveal, earlier_key(earlier)
            ).encode()
        ).digest()
        seed = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
        text = await runner.generate(prompt, seed)
        return parse_result(text, entry)

    # -- results --

    @staticmethod
    def _unavailable(entry: Entry) -> ExamRecord:
        return ExamRecord(name=entry.name, category=entry.category, result="not available")

    @staticmethod
    def _not_found(exam: str) -> ExamResult:
        return ExamResult(
            requested=exam,
            name="",
            result=f'"{exam}" is not in the exam catalogue',
            found=False,
            source="catalogue",
            cost=0.0,
        )

    @staticmethod
    def _single(exam: str, entry: Entry, rec: ExamRecord, source: str) -> ExamResult:
        return ExamResult(
            requested=exam,
            name=entry.name,
            result=rec.result,
            value=rec.value,
            unit=rec.unit,
            found=True,
            source=source,
            cost=entry.cost,
        )

    @staticmethod
    def _panel(exam: str, entry: Entry, parts: list[tuple[str, ExamRecord, str]]) -> ExamResult:
        sources = sorted({src for _, _, src in parts})
        return ExamResult(
            requested=exam,
            name=entry.name,
            result="; ".join(f"{comp}: {rec.result}" for comp, rec, _ in parts),
            found=True,
            source="+".join(sources),  # e.g. "neighbour+record"
            cost=entry.cost,
        )


class RecordExaminer(Examiner):
    """The case's record, else `fallback` ("normal" or "none"): chain `[record, fallback]`."""

    Config = RecordExaminerConfig  # type: ignore[assignment]

    def __init__(self, config: RecordExaminerConfig | None = None) -> None:
        config = config or RecordExaminerConfig()
        if config.fallback not in FALLBACKS:
            raise ConfigError(
                f"RecordExaminer: fallback must be one of {FALLBACKS}, got {config.fallback!r}"
            )
        super().__init__(ExaminerConfig(chain=["record", config.fallback]))
        self.config = config
