"""Hypothesis strategies for every message type of `protocols.messages` and for `Case`.

`message_strategy(cls)` is the strategy for one message class; `STRATEGIES` holds them all, and the
codec tests check that it covers every Struct the protocol exports, so a new message type without a
strategy fails the suite.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

from protocols import arrays, messages
from protocols.case import (
    Case,
    Demographics,
    Diagnosis,
    ExamRecord,
    PatientProfile,
    ReferenceRange,
    Symptom,
)
from protocols.messages import (
    Ack,
    Acked,
    ActReply,
    ActRequest,
    AskPatient,
    BrokerStats,
    BrokerStatsQuery,
    Chunk,
    ChunkQuery,
    CloseEpisode,
    Diagnose,
    EnvObservation,
    EnvStep,
    Error,
    ErrorCode,
    ExamQuery,
    ExamReply,
    ExamResult,
    ExamResults,
    Filtered,
    FormatFeedback,
    Groups,
    Heartbeat,
    Hello,
    Intro,
    ManifestQuery,
    OpenEpisode,
    OrderExam,
    PatientAnswer,
    PatientQuestion,
    PatientReply,
    Publish,
    Published,
    Pull,
    Ready,
    RuleNotice,
    ScoreRequest,
    Shutdown,
    Status,
    StatusQuery,
    Step,
    TensorEntry,
    Terminal,
    Trajectory,
    Turn,
    Verdict,
    VersionApplied,
    WeightManifest,
    WeightsAvailable,
    Welcome,
    WorkerStatus,
)

__all__ = [
    "STRATEGIES",
    "any_action",
    "any_message",
    "any_observation",
    "cases",
    "message_classes",
    "message_strategy",
]

# --- field strategies -----------------------------------------------------------------------------

text = st.text(max_size=24)
short_list = {"max_size": 3}
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # everything msgpack carries
small_ints = st.integers(min_value=0, max_value=10_000)
floats = st.floats(allow_nan=False, allow_infinity=False)
opt_floats = st.none() | floats
unit_floats = st.floats(min_value=0.0, max_value=1.0)
token_ids = st.lists(st.integers(-(2**31), 2**31 - 1), max_size=16).map(arrays.pack_ids)
logprobs = st.lists(
    st.floats(max_value=0.0, allow_nan=False, allow_infinity=False, width=32), max_size=16
).map(arrays.pack_floats)
float_dict = st.dictionaries(text, floats, max_size=3)


def _texts(**kw: Any) -> st.SearchStrategy[list[str]]:
    return st.lists(text, **{**short_list, **kw})


# --- cases ----------------------------------------------------------------------------------------

demographics = st.builds(
    Demographics, age=small_ints, sex=st.sampled_from(["female", "male", "other"]), ethnicity=text
)
symptoms = st.builds(Symptom, name=text, present=st.booleans(), detail=text)
profiles = st.builds(
    PatientProfile,
    demographics=demographics,
    chief_complaint=text,
    history_of_present_illness=text,
    symptoms=st.lists(symptoms, **short_list),
    past_history=_texts(),
    medications=_texts(),
    allergies=_texts(),
    family_history=_texts(),
    social_history=_texts(),
)
reference_ranges = st.builds(ReferenceRange, low=opt_floats, high=opt_floats, text=text)
exam_records = st.builds(
    ExamRecord,
    name=text,
    category=st.sampled_from(["physical", "lab", "microbiology", "imaging", "other"]),
    result=text,
    value=opt_floats,
    unit=text,
    reference=st.none() | reference_ranges,
    time_offset_h=floats,
)
diagnoses = st.builds(Diagnosis, name=text, icd10=text, synonyms=_texts())


def cases() -> st.SearchStrategy[Case]:
    """A `protocols.case.Case` with every field drawn."""
    return st.builds(
        Case,
        id=text,
        profile=profiles,
        exams=st.lists(exam_records, max_size=4),
        key_exams=_texts(),
        diagnosis=diagnoses,
        specialty=text,
        source=text,
    )


# --- messages -------------------------------------------------------------------------------------

STRATEGIES: dict[type, st.SearchStrategy[Any]] = {}


def _register(cls: type, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    STRATEGIES[cls] = strategy
    return strategy


# actions and observations
asks = _register(AskPatient, st.builds(AskPatient, question=text))
exams = _register(OrderExam, st.builds(OrderExam, names=_texts(min_size=1)))
diagnoses_msg = _register(Diagnose, st.builds(Diagnose, name=text, differential=_texts()))
actions = st.one_of(asks, exams, diagnoses_msg)

exam_results = _register(
    ExamResult,
    st.builds(
        ExamResult,
        requested=text,
        name=text,
        result=text,
        value=opt_floats,
        unit=text,
        found=st.booleans(),
        source=st.sampled_from(["record", "neighbour", "normal", "llm", "catalogue", ""]),
        cost=floats,
    ),
)
answers = _register(PatientAnswer, st.builds(PatientAnswer, text=text))
results = _register(
    ExamResults, st.builds(ExamResults, results=st.lists(exam_results, max_size=3), cost=floats)
)
feedbacks = _register(FormatFeedback, st.builds(FormatFeedback, error=text))
notices = _register(RuleNotice, st.builds(RuleNotice, text=text))
observations = st.one_of(answers, results, feedbacks, notices)

# service requests and replies
intros = _register(
    Intro,
    st.builds(
        Intro, age=small_ints, sex=text, chief_complaint=text, budget=floats, max_turns=small_ints
    ),
)
steps = _register(
    Step, st.builds(Step, text=text, action=st.none() | actions, observation=observations)
)
_register(
    PatientQuestion,
    st.builds(PatientQuestion, episode_id=text, case=cases(), question=text, asked=_texts()),
)
_register(PatientReply, st.builds(PatientReply, text=text, leaked=st.booleans()))
_register(
    ExamQuery,
    st.builds(
        ExamQuery,
        episode_id=text,
        case=cases(),
        exam=text,
        earlier=st.lists(exam_results, max_size=3),
        reveal_diagnosis=st.booleans(),
    ),
)
_register(ExamReply, st.builds(ExamReply, result=exam_results))
_register(
    ActRequest,
    st.builds(
        ActRequest,
        episode_id=text,
        intro=intros,
        steps=st.lists(steps, max_size=3),
        dialect=st.sampled_from(["native", "diaggym", "agentclinic"]),
        turn=small_ints,
    ),
)
_register(
    ActReply,
    st.builds(
        ActReply,
        text=text,
        action=st.none() | actions,
        prompt_ids=token_ids,
        token_ids=token_ids,
        logprobs=logprobs,
        policy_version=ints,
    ),
)
_register(
    ScoreRequest,
    st.builds(
        ScoreRequest,
        episode_id=text,
        case=cases(),
        diagnosis=st.none() | diagnoses_msg,
        exams=_texts(),
        cost=floats,
        turns=small_ints,
        format_errors=small_ints,
        leaks=small_ints,
    ),
)
verdicts = _register(
    Verdict,
    st.builds(
        Verdict,
        correct=st.booleans(),
        diagnosis_score=unit_floats,
        match=st.sampled_from(["exact", "synonym", "icd10", "embedding", "llm", "none"]),
        exam_precision=unit_floats,
        exam_recall=unit_floats,
        exam_f1=unit_floats,
        cost=floats,
        turns=small_ints,
        format_errors=small_ints,
        leaks=small_ints,
        reward=floats,
        components=float_dict,
    ),
)

# trajectories
turns = _register(
    Turn,
    st.builds(
        Turn,
        index=small_ints,
        text=text,
        action=st.none() | actions,
        observation=st.none() | observations,
        prompt_ids=token_ids,
        token_ids=token_ids,
        logprobs=logprobs,
        policy_version=ints,
        latency_s=floats,
    ),
)
terminals = st.sampled_from(Terminal)
trajectories = _register(
    Trajectory,
    st.builds(
        Trajectory,
        id=text,
        episode_id=text,
        case_id=text,
        group_id=text,
        sample=small_ints,
        group_size=small_ints,
        specialty=text,
        turns=st.lists(turns, max_size=3),
        terminal=terminals,
        reason=text,
        verdict=st.none() | verdicts,
        cost=floats,
        started=floats,
        finished=floats,
    ),
)

# control
_register(Hello, st.builds(Hello, name=text, role=text))
_register(Welcome, st.builds(Welcome, hub=text, heartbeat_s=floats))
_register(
    Ready,
    st.builds(Ready, service=text, capacity=small_ints, worker=text, policy_version=ints),
)
_register(Heartbeat, st.builds(Heartbeat))
_register(Error, st.builds(Error, code=st.sampled_from(ErrorCode), message=text))
_register(Shutdown, st.builds(Shutdown, reason=text))
_register(StatusQuery, st.builds(StatusQuery))
worker_statuses = _register(
    WorkerStatus,
    st.builds(
        WorkerStatus,
        worker=text,
        service=text,
        capacity=small_ints,
        in_flight=small_ints,
        served=ints,
        policy_version=ints,
    ),
)
_register(
    Status,
    st.builds(
        Status,
        hub=text,
        uptime_s=floats,
        workers=st.lists(worker_statuses, max_size=3),
        queued=st.dictionaries(text, small_ints, max_size=3),
        requests=ints,
        retried=ints,
        counters=float_dict,
    ),
)

# rollout broker
_register(Publish, st.builds(Publish, trajectory=trajectories))
_register(Published, st.builds(Published, id=text, duplicate=st.booleans()))
_register(Pull, st.builds(Pull, max_groups=small_ints, lease_s=floats, wait_s=floats))
_register(
    Groups,
    st.builds(
        Groups,
        lease=text,
        groups=st.lists(st.lists(trajectories, max_size=2), max_size=2),
    ),
)
_register(Ack, st.builds(Ack, lease=text))
_register(Acked, st.builds(Acked, count=ints))
_register(Filtered, st.builds(Filtered, trajectories=ints))
_register(
    BrokerStats,
    st.builds(BrokerStats, received=ints, duplicates=ints, pending=ints, leased=ints, acked=ints),
)
_register(BrokerStatsQuery, st.builds(BrokerStatsQuery))

# weights
tensor_entries = _register(
    TensorEntry,
    st.builds(
        TensorEntry,
        name=text,
        dtype=st.sampled_from(["float32", "bfloat16", "float16", "int8"]),
        shape=st.lists(small_ints, max_size=4),
        offset=ints,
        nbytes=ints,
        sha256=st.binary(min_size=32, max_size=32).map(bytes.hex),
    ),
)
_register(
    WeightManifest,
    st.builds(
        WeightManifest,
        version=ints,
        tensors=st.lists(tensor_entries, max_size=3),
        chunk_bytes=ints,
        total_bytes=ints,
    ),
)
_register(ManifestQuery, st.builds(ManifestQuery, min_version=ints))
_register(ChunkQuery, st.builds(ChunkQuery, version=ints, index=ints))
_register(Chunk, st.builds(Chunk, version=ints, index=ints, data=st.binary(max_size=64)))
_register(VersionApplied, st.builds(VersionApplied, worker=text, version=ints))
_register(WeightsAvailable, st.builds(WeightsAvailable, version=ints, endpoint=text))

# externally driven episodes
_register(
    OpenEpisode,
    st.builds(
        OpenEpisode,
        case_id=text,
        dialect=st.sampled_from(["native", "diaggym", "agentclinic"]),
        seed=ints,
    ),
)
_register(EnvStep, st.builds(EnvStep, episode_id=text, action=st.none() | actions, text=text))
_register(CloseEpisode, st.builds(CloseEpisode, episode_id=text))
_register(
    EnvObservation,
    st.builds(
        EnvObservation,
        episode_id=text,
        intro=intros,
        text=text,
        observation=st.none() | observations,
        done=st.booleans(),
        terminal=st.none() | terminals,
        reason=text,
        verdict=st.none() | verdicts,
        turn=small_ints,
    ),
)


# --- public face ----------------------------------------------------------------------------------


def message_classes() -> list[type]:
    """Every Struct class `protocols.messages` exports."""
    found = []
    for name in messages.__all__:
        obj = getattr(messages, name)
        if isinstance(obj, type) and issubclass(obj, msgspec.Struct):
            found.append(obj)
    return found


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    """The strategy for one message class; `KeyError` if it has none (add it above)."""
    return STRATEGIES[cls]


def any_message() -> st.SearchStrategy[Any]:
    """Any message of any type."""
    return st.one_of(*(STRATEGIES[cls] for cls in sorted(STRATEGIES, key=lambda c: c.__name__)))


def any_action() -> st.SearchStrategy[Any]:
    return actions


def any_observation() -> st.SearchStrategy[Any]:
    return observations
