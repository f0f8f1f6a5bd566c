"""`diaggym`: the fixed phrases of DiagGym / DiagAgent (MAGIC-AI4Med/DiagGym).

Verified from the DiagGym repository (commit bc49719): `DiagAgent/eval/end_to_end/instructions/
diagnose.txt` (identical to `DiagAgent/train/cold_start/diagnose.txt` and to the instruction in
`DiagAgent/train/rl/verl/examples/data_preprocess/diagnose.py`), `DiagAgent/eval/end_to_end/
inference.py`, `.../metric_recommend_exam.py`, `.../metric_acc.py`, the RL rollout
`verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py`, the reward `verl/utils/reward_score/
diagnose.py` and the README:

- An exam request is two lines: `Current diagnosis: <provisional>` then `Based on the patient's
  initial presentation, the following investigation(s) should be performed: <one test>`, then
  `Reason: <why>`. DiagGym reads the exam from the second line, after `performed:` (or `needed:`),
  with every `.` deleted; its exam metric splits that text on `,`.
- A diagnosis is `The available information is sufficient to make a diagnosis.`, a blank line,
  `Diagnosis: <name>` and `Reason: <why>`. DiagGym stops on that sentence (a substring test) and
  takes the text between `Diagnosis:` and `Reason:`.
- Exam results come back as the user message `Here is the test result: <result>`; the first user
  message is the case summary, `- Patient Information: <age> y/o <F|M>` then `- Chief Complaint:
  ...` and further `- <Section>: ...` lines. DiagAgent is a chat model; DiagGym's transformers
  evaluation without a chat template joins messages as `role: content` lines.

Our choices where DiagGym is silent or buggy (assumed, not verified):

- Lines are classified by their leading label, so `Current diagnosis:` and `Reason:` lines are never
  taken for actions, and the last action line of the reply wins. A `Diagnosis:` (or `Final
  diagnosis:`) line is a diagnosis even without the "sufficient information" sentence; the sentence
  alone, without a `Diagnosis:` line, is a format error. An exam line is any other line holding
  `performed:` or `needed:`; its text may instead sit on the next line.
- Several exams are separated by `;` (DiagAgent asks for one test per turn). Commas stay inside
  names, because MIMIC-IV lab names hold them ("Bilirubin, Total"); only a final full stop and one
  pair of wrapping brackets, quotes or bold markers are removed.
- DiagGym has no patient dialogue; questions are `Question: <text>` lines and their answers come
  back as `Patient's answer: <text>`. Differentials, which DiagAgent never writes, are a
  `Differential: a; b` line (the last one in the reply).
- `render_action` writes `Current diagnosis: undetermined` above an exam request (a structured
  action carries no provisional diagnosis) and writes no `Reason:` line.
- `system_prompt` is our own wording of DiagAgent's response format with the same fixed phrases;
  exam results name the exam before the result.

Reserved for round trips: line breaks, `;` in names, `<`/`>`, names ending in `.` or starting with
`*`, and names wrapped in brackets, quotes or backticks.
"""

from __future__ import annotations

import re

from protocols.dialects._base import (
    Dialect,
    clean_name,
    limits,
    number,
    result_line,
    split_names,
    strip_think,
)
from protocols.messages import (
    Action,
    AskPatient,
    Diagnose,
    ExamResults,
    FormatFeedback,
    Intro,
    Observation,
    OrderExam,
    PatientAnswer,
    RuleNotice,
)

__all__ = ["DiagGymDialect"]

SUFFICIENT = "The available information is sufficient to make a diagnosis."
EXAM_LEAD = (
    "Based on the patient's initial presentation, the following investigation(s) should be "
    "performed:"
)
RESULT_LEAD = "Here is the test result:"

_LEAD = r"^[\s>*#-]*"  # markdown bullets, quotes and bold before a label
_COLON = r"\**\s*:\**\s*"
_QUESTION = re.compile(_LEAD + r"question" + _COLON + r"(?P<v>.*)$", re.IGNORECASE)
_DIAGNOSIS = re.compile(_LEAD + r"(?:final\s+)?diagnosis" + _COLON + r"(?P<v>.*)$", re.IGNORECASE)
_DIFFERENTIAL = re.compile(
    _LEAD + r"differential(?:\s+diagnos[ie]s)?" + _COLON + r"(?P<v>.*)$", re.IGNORECASE
)
_IGNORED = re.compile(_LEAD + r"(?:current\s+diagnosis|reason)\b", re.IGNORECASE)
_EXAM = re.compile(r"(?:performed|needed)" + _COLON + r"(?P<v>.*)$", re.IGNORECASE)
_SUFFICIENT = re.compile(r"information\s+is\s+sufficient\s+to\s+make\s+a\s+diagnosis", re.I)


def _sex(sex: str) -> str:
    s = sex.strip().lower()
    return {"female": "F", "f": "F", "woman": "F", "male": "M", "m": "M", "man": "M"}.get(
        s, sex.strip()
    )


class DiagGymDialect(Dialect):
    name = "diaggym"
    expected = (
        "To order an exam write the line 'Based on the patient's initial presentation, the "
        "following investigation(s) should be performed: <exam>'; to diagnose write "
        f"'{SUFFICIENT}' and then the line 'Diagnosis: <name>'; to ask the patient write the "
        "line 'Question: <question>'."
    )
    stop = ("\nuser:",)
    separator = "\n"

    def system_prompt(self, intro: Intro) -> str:
        text = (
            "You are a medical AI assistant helping a doctor diagnose a patient: analyse the "
            "patient information, recommend the examinations that are needed, and give a final "
            "diagnosis once the information suffices.\n\n"
            "RESPONSE FORMAT:\n\n"
            "If more information is needed:\n"
            "```\n"
            "Current diagnosis: [your diagnosis according to the information provided]\n"
            f"{EXAM_LEAD} [one additional test]\n"
            "Reason: [reason for the test]\n"
            "```\n\n"
            "If sufficient information exists for diagnosis:\n"
            "```\n"
            f"{SUFFICIENT}\n\n"
            "Diagnosis: [Diagnosis result]\n"
            "Reason: [Diagnosis reason]\n"
            "```\n\n"
            "You may also ask the patient a question with a line 'Question: [your question]'."
        )
        extra = limits(intro)
        return f"{text}\n{extra}" if extra else text

    def render_intro(self, intro: Intro) -> str:
        return (
            f"- Patient Information: {intro.age} y/o {_sex(intro.sex)}\n"
            f"- Chief Complaint: {intro.chief_complaint.strip()}"
        )

    def render_action(self, action: Action) -> str:
        if isinstance(action, AskPatient):
            return f"Question: {action.question}"
        if isinstance(action, OrderExam):
            return f"Current diagnosis: undetermined\n{EXAM_LEAD} {'; '.join(action.names)}"
        if isinstance(action, Diagnose):
            text = f"{SUFFICIENT}\n\nDiagnosis: {action.name}"
            if action.differential:
                text += f"\nDifferential: {'; '.join(action.differential)}"
            return text
        raise TypeError(f"not an action: {type(action).__name__}")

    def render_observation(self, obs: Observation) -> str:
        if isinstance(obs, ExamResults):
            if not obs.results:
                lines = [f"{RESULT_LEAD} no result was returned."]
            else:
                lines = [f"{RESULT_LEAD} {result_line(r)}" for r in obs.results]
            if obs.cost:
                lines.append(f"Cost of this order: {number(obs.cost)}")
            return "\n".join(lines)
        if isinstance(obs, PatientAnswer):
            return f"Patient's answer: {obs.text}"
        if isinstance(obs, FormatFeedback):
            return f"Your reply could not be read: {obs.error}"
        if isinstance(obs, RuleNotice):
            return f"Notice: {obs.text}"
        raise TypeError(f"not an observation: {type(obs).__name__}")

    def _label(self, role: str, obs: Observation | None) -> str:
        return role  # DiagGym's template-less fallback writes "role: content"

    def _parse(self, text: str) -> Action | FormatFeedback:
        body, unclosed_think = strip_think(text)
        lines = body.split("\n")
        action: tuple[str, str] | None = None  # (kind, value) of the last action line
        differential: str | None = None
        for i, line in enumerate(lines):
            if ":" not in line:  # every label ends with a colon
                continue
            if m := _QUESTION.match(line):
                action = ("ask", m.group("v").strip())
            elif m := _DIAGNOSIS.match(line):
                action = ("diagnosis", m.group("v") or _next_text(lines, i))
            elif m := _DIFFERENTIAL.match(line):
                differential = m.group("v")
            elif _IGNORED.match(line):
                continue
            elif m := _EXAM.search(line):
                action = ("exam", m.group("v") or _next_text(lines, i))

        if action is None:
            if unclosed_think:
                return self.feedback("the reply ended inside an unclosed <think> block")
            if _SUFFICIENT.search(body):
                return self.feedback("the reply says it can diagnose but has no 'Diagnosis:' line")
            if not body.strip():
                return self.feedback("the reply is empty")
            return self.feedback("no exam request, diagnosis or question found")
        kind, value = action
        if kind == "ask":
            if not value:
                return self.feedback("the 'Question:' line is empty")
            return AskPatient(value)
        if kind == "exam":
            names = split_names(value)
            if not names:
                return self.feedback("the exam request names no exam")
            return OrderExam(names)
        name = clean_name(value)
        if not name:
            return self.feedback("the 'Diagnosis:' line is empty")
        return Diagnose(name, split_names(differential) if differential else [])


def _next_text(lines: list[str], i: int) -> str:
    """The value of a label written alone on its line: the next non-empty, unlabelled line."""
    for line in lines[i + 1 : i + 4]:
        if not line.strip():
            continue
        if _IGNORED.match(line) or _QUESTION.match(line) or _DIAGNOSIS.match(line):
            return ""
        if _DIFFERENTIAL.match(line):
            return ""
        return line
    return ""
