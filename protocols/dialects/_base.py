"""The `Dialect` base class and the text helpers the dialects share.

A dialect is stateless: one instance serves every episode. Its `parse` is total (any `str` in, an
action or a `FormatFeedback` out), because its input is whatever a model wrote.
"""

from __future__ import annotations

import abc
import math
import re

from protocols.messages import (
    Action,
    AskPatient,
    Diagnose,
    ExamResult,
    FormatFeedback,
    Intro,
    Observation,
    OrderExam,
    Step,
)

__all__ = ["Dialect", "normalize_action"]


def normalize_action(action: Action) -> Action:
    """The action a dialect's `parse` returns for `render_action(action)`.

    Every string is stripped and list items that are empty after stripping are dropped. Dialects
    guarantee `parse(render_action(a)) == normalize_action(a)` for "reasonable" strings: see each
    dialect's docstring for the characters its markup reserves.
    """
    if isinstance(action, AskPatient):
        return AskPatient(action.question.strip())
    if isinstance(action, OrderExam):
        return OrderExam([n.strip() for n in action.names if n.strip()])
    if isinstance(action, Diagnose):
        return Diagnose(action.name.strip(), [d.strip() for d in action.differential if d.strip()])
    raise TypeError(f"not an action: {type(action).__name__}")


class Dialect(abc.ABC):
    """Renders an episode as text for an LLM and parses its replies back into actions."""

    name: str = ""
    #: What a reply must look like; quoted in every `FormatFeedback` of this dialect.
    expected: str = ""
    #: Stop strings for completion models continuing `prompt()`: the start of the next user turn.
    stop: tuple[str, ...] = ()
    #: Separator between the messages of `prompt()`.
    separator: str = "\n\n"

    # --- rendering --------------------------------------------------------------------------------

    @abc.abstractmethod
    def system_prompt(self, intro: Intro) -> str:
        """Instructions: how to ask, order exams and diagnose; the turn cap and budget if set."""

    @abc.abstractmethod
    def render_intro(self, intro: Intro) -> str:
        """The first user message: who the patient is and why they came."""

    @abc.abstractmethod
    def render_action(self, action: Action) -> str:
        """The text a model of this dialect would write for `action`."""

    @abc.abstractmethod
    def render_observation(self, obs: Observation) -> str:
        """What the agent is told after its action."""

    # --- parsing ----------------------------------------------------------------------------------

    def parse(self, text: str) -> Action | FormatFeedback:
        """The action a model's reply asks for, or `FormatFeedback` saying what was expected.

        Never raises: a reply is untrusted text.
        """
        if not isinstance(text, str):
            return self.feedback(f"the reply is {type(text).__name__}, not text")
        try:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: the action must stay encodable
                text = _SURROGATE.sub("\ufffd", text)
            return self._parse(text)
        except Exception as exc:  # noqa: BLE001 - the engine must never see a parse exception
            return self.feedback(f"the reply could not be read ({type(exc).__name__})")

    @abc.abstractmethod
    def _parse(self, text: str) -> Action | FormatFeedback: ...

    def feedback(self, problem: str) -> FormatFeedback:
        """A `FormatFeedback` naming the problem and restating the expected format."""
        return FormatFeedback(error=f"{problem}. {self.expected}")

    # --- whole conversations ----------------------------------------------------------------------

    def chat(self, intro: Intro, steps: list[Step]) -> list[dict[str, str]]:
        """OpenAI-style messages: system, the intro, then each step's reply and observation."""
        messages = [
            {"role": "system", "content": self.system_prompt(intro)},
            {"role": "user", "content": self.render_intro(intro)},
        ]
        for step in steps:
            messages.append({"role": "assistant", "content": self._reply_text(step)})
            messages.append({"role": "user", "content": self.render_observation(step.observation)})
        return messages

    def prompt(self, intro: Intro, steps: list[Step]) -> str:
        """A plain transcript for completion models, ending where the agent's next reply starts."""
        parts = [
            f"{self._label('system', None)}: {self.system_prompt(intro)}",
            f"{self._label('user', None)}: {self.render_intro(intro)}",
        ]
        for step in steps:
            parts.append(f"{self._label('assistant', None)}: {self._reply_text(step)}")
            obs = step.observation
            parts.append(f"{self._label('user', obs)}: {self.render_observation(obs)}")
        parts.append(f"{self._label('assistant', None)}:")
        return self.separator.join(parts)

    def _label(self, role: str, obs: Observation | None) -> str:
        """The speaker label of a `prompt()` message; `obs` is set for observations."""
        return role.capitalize()

    def _reply_text(self, step: Step) -> str:
        if step.text or step.action is None:
            return step.text
        return self.render_action(step.action)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} dialect {self.name!r}>"


# --- shared text helpers --------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_THINK_TAG = re.compile(r"<\s*(/?)\s*think\s*>", re.IGNORECASE)


def strip_think(text: str) -> tuple[str, bool]:
    """Drop `<think>...</think>` blocks; returns the rest and whether a block was left unclosed.

    A closing tag without an opening one (chat templates that put `<think>` in the prompt) drops
    everything before it; an opening tag that is never closed drops everything after it. Linear in
    the length of the text whatever it holds.
    """
    kept: list[str] = []
    inside = False
    pos = 0
    for m in _THINK_TAG.finditer(text):
        closing = bool(m.group(1))
        if not inside and not closing:
            kept.append(text[pos : m.start()])
            inside = True
        elif inside and closing:
            inside = False
            pos = m.end()
        elif not inside and closing:
            kept.clear()  # the block was opened before this reply began
            pos = m.end()
        # an opening tag inside a block is part of the thought
    if not inside:
        kept.append(text[pos:])
    return "".join(kept), inside


_WRAPPERS = ("[]", '""', "**", "``")


def clean_name(value: str) -> str:
    """A name as a model wrote it after a label: stripped, without a final full stop, unwrapped
    from one pair of brackets, quotes, backticks or bold markers (models copy the `[name]` of
    format templates)."""
    value = value.strip()
    if value.endswith("."):
        value = value[:-1].rstrip()
    for pair in _WRAPPERS:
        n = len(pair) // 2
        if len(value) >= 2 * n and value.startswith(pair[:n]) and value.endswith(pair[n:]):
            value = value[n:-n].strip()
            break
    if value.endswith("."):
        value = value[:-1].rstrip()
    return value


def split_names(value: str, sep: str = ";") -> list[str]:
    return [n for n in (clean_name(part) for part in value.split(sep)) if n]


def number(x: float) -> str:
    """A value as a clinician would write it: `12`, `0.5`, `1.25e-05`."""
    x = float(x)
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".6g")


def result_line(r: ExamResult, *, show_requested: bool = False) -> str:
    """`name: result (value unit)`, or a plain statement that the exam is not in the catalogue."""
    if not r.found:
        asked = r.requested or r.name or "(unnamed exam)"
        return (
            f'"{asked}" is not in the exam catalogue, so there is no result; '
            "order exams by their usual clinical names"
        )
    label = r.name or r.requested or "(unnamed exam)"
    if show_requested and r.requested and r.name and r.requested.casefold() != r.name.casefold():
        label = f'{r.name} (ordered as "{r.requested}")'
    body = r.result.strip()
    if r.value is not None:
        measured = number(r.value) + (f" {r.unit}" if r.unit else "")
        if measured not in body:
            body = f"{body} ({measured})" if body else measured
    return f"{label}: {body or 'no result reported'}"


def limits(intro: Intro) -> str:
    """The episode's turn cap and budget as sentences ("" when neither is set)."""
    parts = []
    if intro.max_turns > 0:
        parts.append(
            f"You have at most {intro.max_turns} turns; every reply counts as one, including "
            "questions, exam orders and replies that cannot be read. If you have not diagnosed "
            "by then, the episode ends without a diagnosis."
        )
    if intro.budget > 0:
        parts.append(
            f"Exams cost money and your budget for this patient is {number(intro.budget)}; "
            "an order that would exceed it is refused."
        )
    return " ".join(parts)


def patient_line(intro: Intro) -> str:
    """`a 45-year-old female`."""
    age = str(intro.age)
    article = "an" if age.startswith("8") or age in ("11", "18") else "a"
    sex = intro.sex.strip()
    sex = {"f": "female", "m": "male"}.get(sex.lower(), sex) or "patient"
    return f"{article} {age}-year-old {sex}"
