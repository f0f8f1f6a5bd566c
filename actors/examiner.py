"""`RecordExaminer`: exam results from the case record, falling back to normal values.

The requested name is matched to the exam catalogue. Not in the catalogue: `found=False` and no
cost (the episode goes on). In the catalogue and in the case: the case's result (source
"record"); a panel returns its components' results joined. In the catalogue but not in the case:
with `fallback="normal"` a value within the reference range, seeded by (case id, exam) so a retry
or a repeated order gives the same answer (source "normal"); with `fallback="none"` a "not
available" result. The cost always comes from the catalogue.
"""

from __future__ import annotations

import random

import msgspec

from cases.catalogue import Catalogue, Entry, default_catalogue
from engine.actor import Actor, ConfigError, handles
from protocols.case import Case, ExamRecord
from protocols.messages import ExamQuery, ExamReply, ExamResult

__all__ = ["RecordExaminer", "RecordExaminerConfig"]

FALLBACKS = ("normal", "none")


class RecordExaminerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fallback: str = "normal"  # normal | none: what an exam the case does not hold returns


class RecordExaminer(Actor):
    """Service "examiner": `ExamQuery` -> `ExamReply`."""

    service = "examiner"
    Config = RecordExaminerConfig

    def __init__(self, config: RecordExaminerConfig | None = None) -> None:
        config = config or RecordExaminerConfig()
        if config.fallback not in FALLBACKS:
            raise ConfigError(
                f"RecordExaminer: fallback must be one of {FALLBACKS}, got {config.fallback!r}"
            )
        super().__init__(config)
        self.catalogue: Catalogue = default_catalogue()

    @handles(ExamQuery)
    def result(self, request: ExamQuery) -> ExamReply:
        return ExamReply(result=self.lookup(request.case, request.exam))

    def lookup(self, case: Case, exam: str) -> ExamResult:
        entry = self.catalogue.match(exam)
        if entry is None:
            return ExamResult(
                requested=exam,
                name="",
                result=f'"{exam}" is not in the exam catalogue',
                found=False,
                source="catalogue",
                cost=0.0,
            )
        records = self._records(case)
        own = records.get(entry.name)
        if own is not None or not entry.is_panel:
            rec, source = self._one(case, entry, own)
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
        parts: list[str] = []
        sources: set[str] = set()
        for comp in entry.panel:
            rec, source = self._one(case, self.catalogue.get(comp), records.get(comp))
            parts.append(f"{comp}: {rec.result}")
            sources.add(source)
        if len(sources) == 1:
            source = sources.pop()
        else:
            source = "+".join(sorted(sources))  # e.g. "normal+record"
        return ExamResult(
            requested=exam,
            name=entry.name,
            result="; ".join(parts),
            found=True,
            source=source,
            cost=entry.cost,
        )

    def _records(self, case: Case) -> dict[str, ExamRecord]:
        """The case's records by canonical name (the earliest record of each exam)."""
        out: dict[str, ExamRecord] = {}
        for rec in sorted(case.exams, key=lambda r: r.time_offset_h):
            entry = self.catalogue.get(rec.name) if rec.name in self.catalogue else None
            if entry is None:
                entry = self.catalogue.match(rec.name)
            out.setdefault(entry.name if entry is not None else rec.name, rec)
        return out

    def _one(self, case: Case, entry: Entry, rec: ExamRecord | None) -> tuple[ExamRecord, str]:
        if rec is not None:
            return rec, "record"
        if self.config.fallback == "none":
            return (
                ExamRecord(name=entry.name, category=entry.category, result="not available"),
                "none",
            )
        rng = random.Random(f"dxsim-normal:{case.id}:{entry.name}")
        return self.catalogue.normal_result(entry, rng), "normal"
