"""Small stand-ins for actors, shared by the engine tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protocols import (
    ActReply,
    ActRequest,
    AskPatient,
    Case,
    Demographics,
    Diagnose,
    Diagnosis,
    ExamQuery,
    ExamRecord,
    ExamReply,
    ExamResult,
    OrderExam,
    PatientProfile,
    PatientQuestion,
    PatientReply,
    ScoreRequest,
    Terminal,
    Trajectory,
    Turn,
    Verdict,
)


def tiny_case(i: int = 0) -> Case:
    return Case(
        id=f"case-{i}",
        profile=PatientProfile(
            demographics=Demographics(age=30 + i % 50, sex="female" if i % 2 else "male"),
            chief_complaint="cough and fever",
        ),
        exams=[ExamRecord("chest x-ray", "imaging", "right lower lobe consolidation")],
        key_exams=["chest x-ray"],
        diagnosis=Diagnosis("pneumonia", "J18.9", ["community-acquired pneumonia"]),
        specialty="pulmonology",
    )


def member(
    group: str, sample: int, size: int, turns: Sequence[Turn] = (), reason: str = "turn cap"
) -> Trajectory:
    """Sample `sample` of a GRPO group of `size`, cut at the turn cap: the broker's unit."""
    return Trajectory(
        id=f"{group}.{sample}/t",
        episode_id=f"{group}.{sample}",
        case_id="c",
        group_id=group,
        sample=sample,
        group_size=size,
        turns=list(turns),
        terminal=Terminal.TRUNCATED,
        reason=reason,
    )


def verdict(correct: bool = True) -> Verdict:
    return Verdict(
        correct=correct,
        diagnosis_score=float(correct),
        match="exact" if correct else "none",
        exam_precision=1.0,
        exam_recall=1.0,
        exam_f1=1.0,
        cost=0.0,
        turns=1,
        format_errors=0,
        leaks=0,
        reward=float(correct),
    )


def scripted_act(request: ActRequest) -> ActReply:
    """Ask, order an exam, then diagnose: three turns."""
    turn = request.turn
    if turn == 0:
        return ActReply(text="", action=AskPatient("Any fever?"))
    if turn == 1:
        return ActReply(text="", action=OrderExam(["chest x-ray"]))
    return ActReply(text="", action=Diagnose("pneumonia"))


def answer(service: str, request: Any) -> Any:
    """A correct reply to any service request."""
    if isinstance(request, ActRequest):
        return scripted_act(request)
    if isinstance(request, PatientQuestion):
        return PatientReply("Yes, since Tuesday.")
    if isinstance(request, ExamQuery):
        return ExamReply(ExamResult(request.exam, request.exam, "normal", cost=10.0))
    if isinstance(request, ScoreRequest):
        return verdict(request.diagnosis is not None)
    raise AssertionError(f"unexpected {type(request).__name__} for {service}")
