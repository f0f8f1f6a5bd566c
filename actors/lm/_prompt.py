"""Compact prompts for the tiny LM: one line for the patient, one line per finished step.

    52 male: cough
    <ask>Have you had a fever?</ask>No, I haven't had a fever.
    <exam>chest X-ray</exam>mass in the right upper lobe
    <exam>sodium</exam>128 mmol/L (low)

Exam results lose their reference ranges but keep their flag ("high", "low"), so a number's
meaning is one token away. The long dialect system prompt is not used: a model trained from
scratch only ever sees this format, and every token saved is CPU time saved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from actors.lm._grammar import END
from protocols.dialects import get_dialect
from protocols.messages import (
    ExamResults,
    FormatFeedback,
    Intro,
    Observation,
    OrderExam,
    PatientAnswer,
    RuleNotice,
    Step,
)

__all__ = ["compact_result", "intro_text", "render_prompt", "step_text"]

_REFERENCE = re.compile(r"\s*\(reference [^)]*\)|;\s*reference [^)]*(?=\))", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_NATIVE = get_dialect("native")
_MAX_FREE_TEXT = 200  # characters kept of a step's raw text when it had no parsed action


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def compact_result(text: str) -> str:
    """`144 mmHg (high; reference 90-139)` -> `144 mmHg (high)`; `85 /min (reference ..)` ->
    `85 /min`: the flag stays, the range goes."""
    return _clean(_REFERENCE.sub("", text))


def intro_text(intro: Intro) -> str:
    return f"{intro.age} {_clean(intro.sex) or 'patient'}: {_clean(intro.chief_complaint)}\n"


def _observation_text(obs: Observation) -> str:
    if isinstance(obs, PatientAnswer):
        return _clean(obs.text)
    if isinstance(obs, ExamResults):
        if not obs.results:
            return "no result"
        parts = []
        for r in obs.results:
            if not r.found:
                parts.append(f"{r.requested or r.name}: unknown exam")
                continue
            body = compact_result(r.result) or "no result"
            if r.value is not None and not r.result.strip():
                body = f"{r.value:g} {r.unit}".strip()
            parts.append(body if len(obs.results) == 1 else f"{r.name or r.requested}: {body}")
        return "; ".join(parts)
    if isinstance(obs, FormatFeedback):
        return f"error: {_clean(obs.error)}"
    if isinstance(obs, RuleNotice):
        return f"notice: {_clean(obs.text)}"
    raise TypeError(f"not an observation: {type(obs).__name__}")


def step_text(step: Step, exam_lists: bool = False) -> str:
    """The action as the native dialect writes it, then what came back, on one line (no space
    between: the action is one token, the answer starts a new word anyway).

    With `exam_lists` an exam order is written as the policy's grammar spells it, one `<exam>`
    tag per exam and the list's end (`<exam>a</exam><exam>b</exam><|end|>`), so that a prompt
    extends the last turn's prompt and completion token for token."""
    if exam_lists and isinstance(step.action, OrderExam):
        action = "".join(f"<exam>{name}</exam>" for name in step.action.names) + END
    elif step.action is not None:
        action = _NATIVE.render_action(step.action).replace("\n", " ")
    else:
        action = _clean(step.text)[:_MAX_FREE_TEXT] or "(empty reply)"
    return f"{action}{_observation_text(step.observation)}\n"


def render_prompt(intro: Intro, steps: Sequence[Step], exam_lists: bool = False) -> str:
    """The whole prompt text, untruncated (the agent tokenizes it part by part: see
    `actors.lm.encode_prompt`, which drops the oldest steps to fit and appends the action cue)."""
    return intro_text(intro) + "".join(step_text(s, exam_lists) for s in steps)
