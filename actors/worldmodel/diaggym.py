"""DiagGym's world-model prompt, and two ways to run it: transformers, or a completions endpoint.

What was verified, and where (MAGIC-AI4Med/DiagGym at commit
bc497195e57690bd73381d6114b3a307108a8c91):

- `DiagGym/eval/instance_wise_evaluation/DiagGym_inference.py` and
  `.../examination_wise_evaluation/numerical/DiagGym_inference.py` (`EHRGenerator.inference`):
  with no past events the prompt is
  `context + "Exam name:\\n" + exam_name + "\\nExam results:\\n"`, otherwise
  `context + SEP.join(past_events) + SEP + "Exam name:\\n" + exam_name + "\\nExam results:\\n"`
  with `SEP = "<SEP>"` and each past event `f"Exam name:\\n{name}\\nExam results:\\n{result}"`;
  sent to `/completions` with `temperature=1.0`, `stop=["<SEP>", "<endoftext>"]`, and the text
  `.strip()`-ed. The README's `DiagGym.simulate` builds the same string.
- The context (`process_single_sample_stepwise`, `run_model_inference`, `train/Dataset.py`): the
  discharge note cut before "Physical Exam:" and stripped, then `"\\n\\nFinal Diagnosis:\\n" +
  discharge_diagnosis` (training and the examination-wise evaluation include it; the README's
  simulate example does not), then
  `"\\nThe following summarizes the results from the patient's medical examination:\\n"`.
  Here the final diagnosis is included only when `reveal_diagnosis` is set.
- Lab results in DiagGym's data read `"Value: 16; Numeric Value: 16.0; Units: mEq/L; Reference
  Range: 8.0 - 20.0"` (README example); the numeric evaluation (`numerical/metric.py`) extracts
  values with the regex `Numeric Value:\\s*([+-]?\\d*\\.?\\d+)` on the line naming the sub-test and
  units with `Units:\\s*([^;]+)`. Earlier numeric results are rendered in that format here, and
  `parse_result` reads generated text with the same regexes.

Not verified (no source): the exact MIMIC note layout of a case. `case_context` renders our case in
the section order of the README's example note (Name/Unit No, Admission/Discharge Date, Date of
Birth/Sex, Service, Allergies, Attending, Chief Complaint, Major Surgical or Invasive Procedure,
History of Present Illness, Past Medical History, Social History, Family History), with MIMIC's
"___" for de-identified fields. The Service line names the specialty only when the diagnosis is
revealed (it would otherwise leak the diagnosis category).

torch and transformers are imported lazily, inside `TransformersRunner`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from cases.catalogue import Entry
from protocols.case import Case, ExamRecord
from protocols.messages import ExamResult

__all__ = [
    "CONTEXT_TAIL",
    "SEP",
    "STOP",
    "CompletionsRunner",
    "TransformersRunner",
    "case_context",
    "diaggym_prompt",
    "lab_text",
    "parse_result",
    "past_event",
]

SEP = "<SEP>"
STOP = [SEP, "<endoftext>"]
CONTEXT_TAIL = "\nThe following summarizes the results from the patient's medical examination:\n"

_SEX = {"female": "F", "male": "M"}


def case_context(case: Case, reveal_diagnosis: bool = False) -> str:
    """The note DiagGym conditions on: history up to the physical exam (+ the final diagnosis)."""
    p = case.profile
    sex = _SEX.get(p.demographics.sex, "___")
    service = case.specialty.upper() if reveal_diagnosis and case.specialty else "___"
    allergies = ", ".join(p.allergies) or "No Known Allergies / Adverse Drug Reactions"
    hpi = p.history_of_present_illness or (
        f"{p.demographics.age}-year-old {p.demographics.sex} with {p.chief_complaint}."
    )
    lines = [
        "Name:  ___                  Unit No:   ___",
        " ",
        "Admission Date:  ___              Discharge Date:   ___",
        " ",
        f"Date of Birth:  ___             Sex:   {sex}",
        " ",
        f"Service: {service}",
        " ",
        "Allergies: ",
        allergies,
        " ",
        "Attending: ___.",
        " ",
        "Chief Complaint:",
        p.chief_complaint,
        " ",
        "Major Surgical or Invasive Procedure:",
        "None",
        " ",
        "History of Present Illness:",
        hpi,
        " ",
        "Past Medical History:",
        "\n".join(p.past_history) or "None",
        " ",
        "Social History:",
        "\n".join(p.social_history) or "___",
        "Family History:",
        "\n".join(p.family_history) or "non-contributory",
    ]
    context = "\n".join(lines).strip()
    if reveal_diagnosis:
        context += "\n\nFinal Diagnosis:\n" + case.diagnosis.name
    return context + CONTEXT_TAIL


def _num(x: float) -> str:
    return f"{x:g}"


def lab_text(value: float, unit: str, low: float | None, high: float | None) -> str:
    """A numeric result in DiagGym's lab format."""
    parts = [f"Value: {_num(value)}", f"Numeric Value: {float(value)!r}"]
    if unit:
        parts.append(f"Units: {unit}")
    if low is not None or high is not None:
        lo = "" if low is None else repr(float(low))
        hi = "" if high is None else repr(float(high))
        parts.append(f"Reference Range: {lo} - {hi}".strip())
    return "; ".join(parts)


def past_event(result: ExamResult, entry: Entry | None = None) -> str:
    """One earlier result as a DiagGym past event."""
    text = result.result
    if result.value is not None:
        ref = entry.reference if entry is not None else None
        text = lab_text(
            result.value,
            result.unit,
            ref.low if ref is not None else None,
            ref.high if ref is not None else None,
        )
    return f"Exam name:\n{result.name or result.requested}\nExam results:\n{text}"


def diaggym_prompt(
    case: Case, exam_name: str, past_events: Sequence[str] = (), reveal_diagnosis: bool = False
) -> str:
    """DiagGym's completion prompt for `exam_name` after `past_events` (see `past_event`)."""
    context = case_context(case, reveal_diagnosis)
    if not past_events:
        return context + "Exam name:\n" + exam_name + "\nExam results:\n"
    return context + SEP.join(past_events) + SEP + "Exam name:\n" + exam_name + "\nExam results:\n"


_NUMERIC = re.compile(r"Numeric Value:\s*([+-]?\d*\.?\d+)")
_VALUE = re.compile(r"Value:\s*([+-]?\d*\.?\d+)")
_UNITS = re.compile(r"Units:\s*([^;\n]+)")


def clean_generation(text: str) -> str:
    """Cut at DiagGym's stop strings (and Qwen's end of text) and strip."""
    for stop in (*STOP, "<|endoftext|>"):
        text = text.split(stop, 1)[0]
    return text.strip()


def parse_result(text: str, entry: Entry) -> ExamRecord:
    """Generated text -> an `ExamRecord` of `entry` (numeric value and unit when present)."""
    text = clean_generation(text)
    value: float | None = None
    unit = ""
    if entry.is_numeric:
        lines = text.split("\n")
        named = [ln for ln in lines if entry.name.lower() in ln.lower()]
        for pattern in (_NUMERIC, _VALUE):
            for line in named + lines:
                m = pattern.search(line)
                if m:
                    try:
                        value = float(m.group(1))
                    except ValueError:
                        continue
                    u = _UNITS.search(line)
                    unit = u.group(1).strip() if u else entry.unit
                    break
            if value is not None:
                break
    return ExamRecord(
        name=entry.name,
        category=entry.category,
        result=text or "no result generated",
        value=value,
        unit=unit,
        reference=entry.reference,
    )


class CompletionsRunner:
    """DiagGym behind an OpenAI-compatible `/completions` endpoint (e.g. `vllm serve`)."""

    def __init__(self, endpoint: Any, temperature: float = 1.0, max_tokens: int = 512) -> None:
        self.endpoint = endpoint  # actors.openai_api.OpenAIEndpoint
        self.temperature = temperature
        self.max_tokens = max_tokens

    async def generate(self, prompt: str, seed: int) -> str:
        completion = await self.endpoint.complete(
            prompt,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            stop=list(STOP),
            seed=seed,
        )
        return clean_generation(completion.text)

    async def aclose(self) -> None:
        await self.endpoint.aclose()


class TransformersRunner:
    """DiagGym (or any causal LM) in process; `generate` runs in a worker thread."""

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        model_path: str = "",
        temperature: float = 1.0,
        max_new_tokens: int = 256,
    ) -> None:
        if model is None:
            if not model_path:
                raise ValueError("TransformersRunner needs a model (or a local model_path)")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True)
        if tokenizer is None:
            raise ValueError("TransformersRunner needs the model's tokenizer")
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generation at a time; seeds the global torch RNG

    def generate_sync(self, prompt: str, seed: int) -> str:
        import torch

        enc = self.tokenizer(prompt, return_tensors="pt")
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is not None:
            kwargs["pad_token_id"] = pad
        with self._lock, torch.no_grad():
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask"), **kwargs
            )
        new = out[0, enc["input_ids"].shape[1] :]
        return clean_generation(self.tokenizer.decode(new, skip_special_tokens=False))

    async def generate(self, prompt: str, seed: int) -> str:
        import trio

        return await trio.to_thread.run_sync(self.generate_sync, prompt, seed)

    async def aclose(self) -> None:
        return None
