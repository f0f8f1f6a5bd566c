"""`agentclinic`: the doctor's phrases of AgentClinic (SamuelSchmidgall/AgentClinic).

Verified from `agentclinic.py` of that repository: the doctor "only responds in the form of
dialogue", requests tests with `REQUEST TEST: [test]` (example `REQUEST TEST: Chest_X-Ray`) and ends
with `DIAGNOSIS READY: [diagnosis here]`; everything else it says goes to the patient. The
measurement agent answers `RESULTS: [results here]` (and `NORMAL READINGS` for tests the case lacks:
that is the Examiner's business, not the dialect's). The doctor's completion prompt ends with
`Doctor: `. AgentClinic detects both phrases with substring tests (`"REQUEST TEST" in text`).

Our rules: a marker counts only with its colon (`REQUEST TEST:`, `DIAGNOSIS READY:`, any case), so
"I am not DIAGNOSIS READY yet" is a question, not a diagnosis. A marker's name runs to the end of
its line (or to the next marker). The last marker decides the action; when it is a test request,
every `REQUEST TEST:` after the last `DIAGNOSIS READY:` is ordered, one test per marker (so names
may hold `;` and `,`). A reply with no marker is a question to the patient: the whole reply,
stripped, `<think>` blocks removed. A differential, which AgentClinic does not have, is a
`DIFFERENTIAL: a; b` line (the last one in the reply). A final full stop and one pair of wrapping
brackets, quotes or bold markers are removed from names.

Reserved for round trips: the markers themselves, line breaks in names, `;` in differential items,
`<`/`>`, names ending in `.` or wrapped in brackets, quotes or backticks.
"""

from __future__ import annotations

import re

from protocols.dialects._base import (
    Dialect,
    clean_name,
    limits,
    number,
    patient_line,
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

__all__ = ["AgentClinicDialect"]

_MARKER = re.compile(r"\b(request\s+test|diagnosis\s+ready)\s*:", re.IGNORECASE)
_DIFFERENTIAL = re.compile(r"^[ \t]*differential[ \t]*:(?P<v>[^\n]*)$", re.I | re.M)


class AgentClinicDialect(Dialect):
    name = "agentclinic"
    expected = (
        'Talk to the patient in plain dialogue, request a test with "REQUEST TEST: [test]", '
        'or give your diagnosis with "DIAGNOSIS READY: [diagnosis here]".'
    )
    stop = ("\nPatient:", "\nMeasurement:", "\nModerator:")

    def system_prompt(self, intro: Intro) -> str:
        text = (
            "You are a doctor named Dr. Agent and you only respond in the form of dialogue. You "
            "are examining a patient whom you will ask questions in order to understand their "
            "disease. Your dialogue is only 1-3 sentences long. You can request test results "
            'with the format "REQUEST TEST: [test]", for example "REQUEST TEST: Chest_X-Ray"; '
            "request one test per line. Once you have decided on a diagnosis, type "
            '"DIAGNOSIS READY: [diagnosis here]".'
        )
        extra = limits(intro)
        return f"{text}\n{extra}" if extra else text

    def render_intro(self, intro: Intro) -> str:
        return (
            f"Below is all of the information you have. The patient is {patient_line(intro)}. "
            f"Chief complaint: {intro.chief_complaint.strip()}.\n\n"
            "Remember, you must discover their disease by asking them questions. You are also "
            "able to request tests."
        )

    def render_action(self, action: Action) -> str:
        if isinstance(action, AskPatient):
            return action.question
        if isinstance(action, OrderExam):
            return "\n".join(f"REQUEST TEST: {n}" for n in action.names)
        if isinstance(action, Diagnose):
            text = f"DIAGNOSIS READY: {action.name}"
            if action.differential:
                text += f"\nDIFFERENTIAL: {'; '.join(action.differential)}"
            return text
        raise TypeError(f"not an action: {type(action).__name__}")

    def render_observation(self, obs: Observation) -> str:
        if isinstance(obs, PatientAnswer):
            return obs.text
        if isinstance(obs, ExamResults):
            lines = [result_line(r) for r in obs.results] or ["no result was returned"]
            text = f"RESULTS: {lines[0]}" if len(lines) == 1 else "RESULTS:\n" + "\n".join(lines)
            if obs.cost:
                text += f"\n(cost of this request: {number(obs.cost)})"
            return text
        if isinstance(obs, FormatFeedback):
            return f"FORMAT ERROR: {obs.error}"
        if isinstance(obs, RuleNotice):
            return f"NOTICE: {obs.text}"
        raise TypeError(f"not an observation: {type(obs).__name__}")

    def _label(self, role: str, obs: Observation | None) -> str:
        if role == "assistant":
            return "Doctor"
        if role == "system":
            return "Instructions"
        if obs is None:
            return "Case"
        if isinstance(obs, ExamResults):
            return "Measurement"
        if isinstance(obs, (FormatFeedback, RuleNotice)):
            return "Moderator"
        return "Patient"

    def _parse(self, text: str) -> Action | FormatFeedback:
        body, unclosed_think = strip_think(text)
        markers = list(_MARKER.finditer(body))
        if not markers:
            question = body.strip()
            if question:
                return AskPatient(question)
            if unclosed_think:
                return self.feedback("the reply ended inside an unclosed <think> block")
            return self.feedback("the reply is empty")

        def value(i: int) -> str:
            start = markers[i].end()
            stop = markers[i + 1].start() if i + 1 < len(markers) else len(body)
            end = body.find("\n", start, stop)  # bounded: linear over all markers
            return body[start : stop if end < 0 else end]

        last = len(markers) - 1
        if markers[last].group(1).lower().startswith("diagnosis"):
            name = clean_name(value(last))
            if not name:
                return self.feedback("DIAGNOSIS READY: names no diagnosis")
            differentials = _DIFFERENTIAL.findall(body)
            return Diagnose(name, split_names(differentials[-1]) if differentials else [])
        first = last
        while first > 0 and markers[first - 1].group(1).lower().startswith("request"):
            first -= 1
        names = [n for n in (clean_name(value(i)) for i in range(first, last + 1)) if n]
        if not names:
            return self.feedback("REQUEST TEST: names no test")
        return OrderExam(names)
