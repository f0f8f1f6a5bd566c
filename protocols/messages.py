"""Every message body that crosses the wire, as tagged msgspec Structs.

Bodies are grouped by who sends them: actions and observations (the episode), service requests
and replies (Patient, Examiner, Agent, Judge), trajectories and verdicts, control (handshake,
heartbeats, errors), broker, weights and externally driven episodes. `Message` is the union the
codec decodes.
"""

from __future__ import annotations

import enum

import msgspec

from protocols.case import Case

__all__ = [
    "Ack",
    "Acked",
    "ActReply",
    "ActRequest",
    "Action",
    "AskPatient",
    "BrokerStats",
    "BrokerStatsQuery",
    "Chunk",
    "ChunkQuery",
    "CloseEpisode",
    "Diagnose",
    "EnvObservation",
    "EnvStep",
    "Error",
    "ErrorCode",
    "ExamQuery",
    "ExamReply",
    "ExamResult",
    "ExamResults",
    "Filtered",
    "FormatFeedback",
    "Groups",
    "Heartbeat",
    "Hello",
    "Intro",
    "ManifestQuery",
    "Message",
    "Observation",
    "OpenEpisode",
    "OrderExam",
    "PatientAnswer",
    "PatientQuestion",
    "PatientReply",
    "Publish",
    "Published",
    "Pull",
    "Ready",
    "RuleNotice",
    "ScoreRequest",
    "Shutdown",
    "Status",
    "StatusQuery",
    "Step",
    "TensorEntry",
    "Terminal",
    "Trajectory",
    "Turn",
    "Verdict",
    "VersionApplied",
    "WeightManifest",
    "WeightsAvailable",
    "Welcome",
    "WorkerStatus",
]


class _Msg(msgspec.Struct, tag=True, frozen=True, gc=False):
    """Base: the class name is the wire tag."""


# --- actions (what the agent does) ---------------------------------------------------------------


class AskPatient(_Msg):
    question: str


class OrderExam(_Msg):
    names: list[str]  # one or more exams, free text; matched to the catalogue by the Examiner


class Diagnose(_Msg):
    name: str
    differential: list[str] = []


Action = AskPatient | OrderExam | Diagnose


# --- observations (what the agent sees next) -----------------------------------------------------


class ExamResult(_Msg):
    requested: str  # the name as the agent wrote it
    name: str  # canonical name, "" when the catalogue has no match
    result: str
    value: float | None = None
    unit: str = ""
    found: bool = True  # False: not in the catalogue (the episode goes on)
    source: str = ""  # record | neighbour | normal | llm | catalogue ...
    cost: float = 0.0


class PatientAnswer(_Msg):
    text: str


class ExamResults(_Msg):
    results: list[ExamResult]
    cost: float = 0.0  # charged for this order


class FormatFeedback(_Msg):
    error: str  # why the agent's output could not be parsed; counts as a turn


class RuleNotice(_Msg):
    """The scheduler refused an action by the episode's rules (budget, repeated exam ...)."""

    text: str


Observation = PatientAnswer | ExamResults | FormatFeedback | RuleNotice


# --- service requests and replies ---


class Intro(_Msg):
    """What the agent is told when the episode starts."""

    age: int
    sex: str
    chief_complaint: str
    budget: float = 0.0
    max_turns: int = 0


class Step(_Msg):
    """One finished turn as the agent saw it: its output, the parsed action, the observation."""

    text: str
    action: Action | None
    observation: Observation


class PatientQuestion(_Msg):
    episode_id: str
    case: Case
    question: str
    asked: list[str] = []  # earlier questions in this episode


class PatientReply(_Msg):
    text: str
    leaked: bool = False  # the backend had to redact the diagnosis


class ExamQuery(_Msg):
    episode_id: str
    case: Case
    exam: str  # free-text name as requested
    earlier: list[ExamResult] = []
    reveal_diagnosis: bool = False  # may the world model see the final diagnosis


class ExamReply(_Msg):
    result: ExamResult


class ActRequest(_Msg):
    episode_id: str
    intro: Intro
    steps: list[Step]
    dialect: str = "native"
    turn: int = 0


class ActReply(_Msg):
    text: str  # the model's raw output, rendered by the dialect when the backend is structured
    action: Action | None = None  # set by structured (scripted) backends; else parsed from text
    prompt_ids: bytes = b""  # int32 little-endian
    token_ids: bytes = b""  # int32 little-endian
    logprobs: bytes = b""  # float32 little-endian, one per token id
    policy_version: int = 0


class ScoreRequest(_Msg):
    episode_id: str
    case: Case
    diagnosis: Diagnose | None
    exams: list[str]  # canonical names of the exams ordered, in order
    cost: float
    turns: int
    format_errors: int
    leaks: int = 0


class Verdict(_Msg):
    """Every reward component explicit; `reward` is their weighted sum under the run's weights."""

    correct: bool
    diagnosis_score: float  # 1 exact/synonym, partial for ICD-10 hierarchy, 0 wrong
    match: str  # exact | synonym | icd10 | embedding | llm | none
    exam_precision: float
    exam_recall: float
    exam_f1: float
    cost: float
    turns: int
    format_errors: int
    leaks: int
    reward: float
    components: dict[str, float] = {}  # weighted contributions, name -> value


# --- trajectories ---


class Terminal(enum.Enum):
    DIAGNOSED = "diagnosed"
    TRUNCATED = "truncated"
    ABORTED = "aborted"


class Turn(_Msg):
    index: int
    text: str
    action: Action | None
    observation: Observation | None
    prompt_ids: bytes = b""
    token_ids: bytes = b""
    logprobs: bytes = b""
    policy_version: int = 0
    latency_s: float = 0.0


class Trajectory(_Msg, kw_only=True):
    id: str
    episode_id: str
    case_id: str
    group_id: str
    sample: int = 0  # index within the GRPO group
    group_size: int = 1
    specialty: str = ""
    turns: list[Turn]
    terminal: Terminal
    reason: str  # "diagnosed", "turn cap", "budget", "agent: timeout after 3 attempts", ...
    verdict: Verdict | None = None
    cost: float = 0.0
    started: float = 0.0  # unix seconds
    finished: float = 0.0


# --- control ---


class ErrorCode(enum.IntEnum):
    BAD_MESSAGE = 1  # undecodable or malformed frame
    VERSION_MISMATCH = 2
    UNKNOWN_SERVICE = 3
    OVERLOADED = 4
    TIMEOUT = 5
    WORKER_FAILED = 6  # the handler raised
    NO_WORKER = 7
    BAD_REQUEST = 8  # well-formed, but not a request this service handles
    NOT_FOUND = 9
    SHUTTING_DOWN = 10


class Hello(_Msg):
    """A client's handshake. The hub answers `Welcome` or an `Error` naming both versions."""

    name: str
    role: str = "client"


class Welcome(_Msg):
    hub: str
    heartbeat_s: float


class Ready(_Msg):
    """A worker offers `capacity` concurrent requests of `service`."""

    service: str
    capacity: int
    worker: str
    policy_version: int = -1  # the weight version an agent serves; -1: not a policy


class Heartbeat(_Msg):
    pass


class Error(_Msg):
    code: ErrorCode
    message: str


class Shutdown(_Msg):
    reason: str = ""


class StatusQuery(_Msg):
    pass


class WorkerStatus(_Msg):
    worker: str
    service: str
    capacity: int
    in_flight: int
    served: int
    policy_version: int = -1


class Status(_Msg):
    hub: str
    uptime_s: float
    workers: list[WorkerStatus]
    queued: dict[str, int]
    requests: int
    retried: int
    counters: dict[str, float] = {}  # filled by head components (episodes done, ...)


# --- rollout broker ---


class Publish(_Msg):
    trajectory: Trajectory


class Published(_Msg):
    id: str
    duplicate: bool = False


class Pull(_Msg):
    max_groups: int = 1
    lease_s: float = 60.0
    wait_s: float = 0.0  # long poll: hold the request up to this long until a group is complete


class Groups(_Msg):
    lease: str
    groups: list[list[Trajectory]]


class Ack(_Msg):
    lease: str


class Acked(_Msg):
    count: int


class Filtered(_Msg):
    """Learner -> head: it acked `trajectories` without training on them (groups whose samples
    all scored the same: dynamic sampling). The staleness admission frees their slots; counted
    as trained they would hold the rollouts back while the learner waits for groups with signal.
    Answered with `Acked`."""

    trajectories: int


class BrokerStats(_Msg):
    received: int
    duplicates: int
    pending: int
    leased: int
    acked: int


class BrokerStatsQuery(_Msg):
    pass


# --- weights (served by learners, applied by agents) ---------------------------------------------


class TensorEntry(_Msg):
    name: str
    dtype: str
    shape: list[int]
    offset: int
    nbytes: int
    sha256: str


class WeightManifest(_Msg):
    version: int
    tensors: list[TensorEntry]
    chunk_bytes: int
    total_bytes: int


class ManifestQuery(_Msg):
    min_version: int = 0


class ChunkQuery(_Msg):
    version: int
    index: int


class Chunk(_Msg):
    version: int
    index: int
    data: bytes


class VersionApplied(_Msg):
    worker: str
    version: int


class WeightsAvailable(_Msg):
    """A learner published `version`; its chunks are served at `endpoint` (a weight server).

    Learner -> head (a request to the "head" service); the hub then sends it to every worker as a
    CONTROL message, and to each worker that joins later."""

    version: int
    endpoint: str


# --- externally driven episodes ---


class OpenEpisode(_Msg):
    """Start an episode whose agent lives outside the cluster (a gym-style `reset`)."""

    case_id: str = ""  # empty: the scheduler picks the next case
    dialect: str = "native"
    seed: int = 0


class EnvStep(_Msg):
    """One agent turn from outside: a structured action, or raw text parsed by the dialect."""

    episode_id: str
    action: Action | None = None
    text: str = ""


class CloseEpisode(_Msg):
    episode_id: str


class EnvObservation(_Msg):
    episode_id: str
    intro: Intro
    text: str  # the observation rendered by the episode's dialect
    observation: Observation | None = None
    done: bool = False
    terminal: Terminal | None = None
    reason: str = ""
    verdict: Verdict | None = None
    turn: int = 0


Message = (
    AskPatient
    | OrderExam
    | Diagnose
    | PatientAnswer
    | ExamResults
    | FormatFeedback
    | RuleNotice
    | Intro
    | Step
    | PatientQuestion
    | PatientReply
    | ExamQuery
    | ExamReply
    | ActRequest
    | ActReply
    | ScoreRequest
    | Verdict
    | Turn
    | Trajectory
    | Hello
    | Welcome
    | Ready
    | Heartbeat
    | Error
    | Shutdown
    | StatusQuery
    | WorkerStatus
    | Status
    | Publish
    | Published
    | Pull
    | Groups
    | Ack
    | Acked
    | Filtered
    | BrokerStats
    | BrokerStatsQuery
    | TensorEntry
    | WeightManifest
    | ManifestQuery
    | ChunkQuery
    | Chunk
    | VersionApplied
    | WeightsAvailable
    | OpenEpisode
    | EnvStep
    | CloseEpisode
    | EnvObservation
    | ExamResult
)
