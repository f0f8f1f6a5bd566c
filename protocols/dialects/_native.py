"""`native`: dxsim's own tagged dialect.

Actions are XML-like tags; tag names are case-insensitive and contents are stripped:

    <ask>Does the pain spread to your arm?</ask>
    <exam>Troponin I; ECG</exam>                      one tag, names separated by ";"
    <diagnosis>Acute myocardial infarction</diagnosis>
    <differential>Unstable angina; Aortic dissection</differential>   optional, with a diagnosis

Several exams go in ONE `<exam>` tag separated by `;` (not several tags), so that the rule "the last
complete action tag is the action" stays unambiguous; a line break inside the tag separates names
too. A reply may reason first: text outside the
action tag is ignored, and so is everything inside `<think>...</think>`.

Parsing is structural, never a substring test: an action is an opening tag followed by its own
closing tag with no other dialect tag in between. "I will not give a <diagnosis> yet" has no
complete tag, so it is a format error. When the action is a diagnosis, the last complete
`<differential>` tag anywhere in the reply is its differential.

Reserved for round trips: `<` and `>` anywhere, `;` and line breaks inside exam names and
differential items.
"""

from __future__ import annotations

import re

from protocols.dialects._base import (
    Dialect,
    limits,
    number,
    patient_line,
    result_line,
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

__all__ = ["NativeDialect"]

_TAG = re.compile(r"<\s*(/?)\s*(ask|exam|diagnosis|differential)\s*>", re.IGNORECASE)
_ACTIONS = ("ask", "exam", "diagnosis")
_SEPARATORS = re.compile(r"[;\n\r]")


def _split(value: str) -> list[str]:
    """Names separated by `;` or line breaks (one exam per line inside the tag also works)."""
    return [n for n in (part.strip() for part in _SEPARATORS.split(value)) if n]


class NativeDialect(Dialect):
    name = "native"
    expected = (
        "End your reply with exactly one action: <ask>question</ask>, "
        "<exam>exam name; another exam</exam> or <diagnosis>name</diagnosis> "
        "(optionally followed by <differential>name; name</differential>)."
    )
    stop = ("\nUser:",)

    def system_prompt(self, intro: Intro) -> str:
        text = (
            "You are a physician working up a patient. Each reply takes exactly one action, "
            "written as a tag at the end of the reply:\n"
            "- ask the patient a question: <ask>your question</ask>\n"
            "- order one or more exams (physical examination, laboratory tests, imaging), "
            "separated by semicolons: <exam>Complete blood count; Chest X-ray</exam>\n"
            "- commit to a final diagnosis, which ends the episode: "
            "<diagnosis>diagnosis name</diagnosis>, optionally followed by "
            "<differential>alternative; alternative</differential>\n"
            "You may think first inside <think>...</think>; only the last complete action tag "
            "counts. A reply without a complete action tag is a format error and still uses a "
            "turn. Ask and order what you need, avoid unnecessary exams, and diagnose when you "
            "are confident."
        )
        extra = limits(intro)
        return f"{text}\n{extra}" if extra else text

    def render_intro(self, intro: Intro) -> str:
        who = patient_line(intro)
        return f"New patient: {who}.\nChief complaint: {intro.chief_complaint.strip()}"

    def render_action(self, action: Action) -> str:
        if isinstance(action, AskPatient):
            return f"<ask>{action.question}</ask>"
        if isinstance(action, OrderExam):
            return f"<exam>{'; '.join(action.names)}</exam>"
        if isinstance(action, Diagnose):
            text = f"<diagnosis>{action.name}</diagnosis>"
            if action.differential:
                text += f"\n<differential>{'; '.join(action.differential)}</differential>"
            return text
        raise TypeError(f"not an action: {type(action).__name__}")

    def render_observation(self, obs: Observation) -> str:
        if isinstance(obs, PatientAnswer):
            return f"Patient: {obs.text}"
        if isinstance(obs, ExamResults):
            if not obs.results:
                lines = ["Exam results: none returned."]
            else:
                lines = ["Exam results:"]
                lines += [f"- {result_line(r, show_requested=True)}" for r in obs.results]
            if obs.cost:
                lines.append(f"Cost of this order: {number(obs.cost)}")
            return "\n".join(lines)
        if isinstance(obs, FormatFeedback):
            return f"Format error: {obs.error}"
        if isinstance(obs, RuleNotice):
            return f"Notice: {obs.text}"
        raise TypeError(f"not an observation: {type(obs).__name__}")

    def _parse(self, text: str) -> Action | FormatFeedback:
        body, unclosed_think = strip_think(text)
        # (kind, content) of every complete element, in order; an opening tag abandons any
        # element still open, so no element contains another dialect tag.
        elements: list[tuple[str, str]] = []
        open_kind = ""
        open_end = 0
        dangling = ""  # the last opening tag that never closed
        for m in _TAG.finditer(body):
            kind = m.group(2).lower()
            if not m.group(1):
                if open_kind:
                    dangling = open_kind
                open_kind, open_end = kind, m.end()
            elif kind == open_kind:
                elements.append((kind, body[open_end : m.start()]))
                open_kind = ""
        if open_kind:
            dangling = open_kind

        actions = [(k, c) for k, c in elements if k in _ACTIONS]
        if not actions:
            if unclosed_think:
                return self.feedback("the reply ended inside an unclosed <think> block")
            if dangling:
                return self.feedback(f"the <{dangling}> tag is never closed with </{dangling}>")
            if not body.strip():
                return self.feedback("the reply is empty")
            return self.feedback("no action tag found")

        kind, content = actions[-1]
        if kind == "ask":
            question = content.strip()
            if not question:
                return self.feedback("the <ask> tag is empty")
            return AskPatient(question)
        if kind == "exam":
            names = _split(content)
            if not names:
                return self.feedback("the <exam> tag names no exam")
            return OrderExam(names)
        name = content.strip()
        if not name:
            return self.feedback("the <diagnosis> tag is empty")
        differentials = [c for k, c in elements if k == "differential"]
        return Diagnose(name, _split(differentials[-1]) if differentials else [])
