"""World models for the Examiner: results of exams a case does not hold.

`neighbour`: a non-parametric model over a reference bank (pure Python). `diaggym`: DiagGym's
prompt format and runners (transformers in process, or an OpenAI-compatible completions endpoint).
"""

from actors.worldmodel.diaggym import (
    CompletionsRunner,
    TransformersRunner,
    case_context,
    diaggym_prompt,
    parse_result,
    past_event,
)
from actors.worldmodel.neighbour import NeighbourModel, case_records, zscore

__all__ = [
    "CompletionsRunner",
    "NeighbourModel",
    "TransformersRunner",
    "case_context",
    "case_records",
    "diaggym_prompt",
    "parse_result",
    "past_event",
    "zscore",
]
