"""Text dialects: render/parse round trips, total parsing, and the rules of each dialect."""

from __future__ import annotations

import ast
import pathlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import protocols.dialects as dialects
from protocols.codec import decode, encode
from protocols.dialects import (
    DIALECTS,
    Dialect,
    UnknownDialect,
    get_dialect,
    normalize_action,
)
from protocols.messages import (
    AskPatient,
    Diagnose,
    ExamResult,
    ExamResults,
    FormatFeedback,
    Intro,
    OrderExam,
    PatientAnswer,
    RuleNotice,
    Step,
)
from tests.strategies import any_action, any_observation

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NATIVE = get_dialect("native")
DIAGGYM = get_dialect("diaggym")
AGENTCLINIC = get_dialect("agentclinic")

INTRO = Intro(age=58, sex="male", chief_complaint="crushing chest pain", budget=250.0, max_turns=8)

# --- "reasonable" strings -------------------------------------------------------------------------
# No line breaks (str.splitlines' set), nothing of the dialects' markup (`<`, `>`, `;`, wrappers),
# no final full stop; non-empty once stripped. Padding adds spaces and tabs around the core.

_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_RESERVED = _LINE_BREAKS + '<>;*[]"`'
_MARKERS = ("request test", "diagnosis ready", "differential")

core = (
    st.text(st.characters(exclude_characters=_RESERVED, exclude_categories=["Cs"]), max_size=30)
    .map(str.strip)
    .filter(lambda s: s and not s.endswith("."))
    .filter(lambda s: not any(m in s.casefold() for m in _MARKERS))
)
padding = st.sampled_from(["", " ", "  ", "\t", " \t "])
reasonable = st.builds(lambda a, s, b: a + s + b, padding, core, padding)
reasonable_actions = st.one_of(
    st.builds(AskPatient, question=reasonable),
    st.builds(OrderExam, names=st.lists(reasonable, min_size=1, max_size=4)),
    st.builds(Diagnose, name=reasonable, differential=st.lists(reasonable, max_size=3)),
)


@pytest.fixture(params=DIALECTS, scope="module")
def dialect(request: pytest.FixtureRequest) -> Dialect:
    return get_dialect(request.param)


# --- registry -------------------------------------------------------------------------------------


def test_registry() -> None:
    assert DIALECTS == ("native", "diaggym", "agentclinic")
    for name in DIALECTS:
        d = get_dialect(name)
        assert isinstance(d, Dialect) and d.name == name
        assert get_dialect(name) is d


def test_unknown_dialect_lists_known_names() -> None:
    with pytest.raises(UnknownDialect) as info:
        get_dialect("klingon")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "klingon" in message
    for name in DIALECTS:
        assert name in message
    with pytest.raises(KeyError):
        get_dialect(None)  # type: ignore[arg-type]


def test_public_surface() -> None:
    assert sorted(dialects.__all__) == sorted(
        [
            "DIALECTS",
            "AgentClinicDialect",
            "DiagGymDialect",
            "Dialect",
            "NativeDialect",
            "UnknownDialect",
            "get_dialect",
            "normalize_action",
        ]
    )


def test_dialects_import_only_stdlib_msgspec_and_protocols() -> None:
    allowed = {"__future__", "abc", "math", "re", "msgspec", "protocols"}
    for path in pathlib.Path(dialects.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"


# --- properties -----------------------------------------------------------------------------------


@SETTINGS
@given(action=reasonable_actions)
def test_render_then_parse_round_trips(dialect: Dialect, action) -> None:  # noqa: ANN001
    text = dialect.render_action(action)
    assert dialect.parse(text) == normalize_action(action), text


@FEW
@given(action=reasonable_actions, before=st.sampled_from(["", "Let me think.\n", "  \n"]))
def test_round_trip_after_thinking(dialect: Dialect, action, before: str) -> None:  # noqa: ANN001
    # agentclinic: any text before a question is part of the question
    assume(not (dialect is AGENTCLINIC and isinstance(action, AskPatient) and before.strip()))
    text = f"<think>Could be <diagnosis>X</diagnosis> or REQUEST TEST: Y</think>{before}"
    text += dialect.render_action(action)
    assert dialect.parse(text) == normalize_action(action), text


def _total(dialect: Dialect, text: str) -> None:
    out = dialect.parse(text)
    assert isinstance(out, (AskPatient, OrderExam, Diagnose, FormatFeedback))
    if isinstance(out, FormatFeedback):
        assert out.error
    elif isinstance(out, OrderExam):
        assert out.names and all(n and n == n.strip() for n in out.names)
    elif isinstance(out, Diagnose):
        assert out.name and out.name == out.name.strip()
    else:
        assert out.question and out.question == out.question.strip()
    assert decode(encode(out)) == out  # whatever parse returns can go on the wire


@SETTINGS
@given(text=st.text())
def test_parse_never_raises_on_text(dialect: Dialect, text: str) -> None:
    _total(dialect, text)


@SETTINGS
@given(data=st.binary(max_size=200), codec=st.sampled_from(["latin-1", "utf-8", "utf-16-le"]))
def test_parse_never_raises_on_binary_garbage(dialect: Dialect, data: bytes, codec: str) -> None:
    _total(dialect, data.decode(codec, errors="surrogateescape" if codec == "utf-8" else "replace"))


_pieces = st.sampled_from(
    [
        "<ask>", "</ask>", "<exam>", "</exam>", "<diagnosis>", "</diagnosis>", "<differential>",
        "</differential>", "<think>", "</think>", "< Exam >", "</ DIAGNOSIS>", "REQUEST TEST:",
        "DIAGNOSIS READY:", "DIFFERENTIAL:", "Diagnosis:", "Question:", "Final diagnosis:",
        "Current diagnosis:", "Reason:", "should be performed:", "needed:", "The available "
        "information is sufficient to make a diagnosis.", ";", "\n", " ", "CBC", "[x]", "**", ".",
        "\ud800", "\x00", "é", "\u2028",
    ]
)  # fmt: skip


@SETTINGS
@given(pieces=st.lists(_pieces, max_size=30))
def test_parse_never_raises_on_markup_soup(dialect: Dialect, pieces: list[str]) -> None:
    _total(dialect, "".join(pieces))


@pytest.mark.parametrize("size", [300_000])
def test_parse_huge_inputs(dialect: Dialect, size: int) -> None:
    for unit in ("a", "<exam>", "<think>", "x\n", "REQUEST TEST:", "performed:", ":\n", "<"):
        _total(dialect, unit * (size // len(unit)))


@pytest.mark.parametrize("text", ["", " ", "\n\t \n", "<think>all thought</think>"])
def test_empty_replies_are_format_errors(dialect: Dialect, text: str) -> None:
    assert isinstance(dialect.parse(text), FormatFeedback)


def test_non_text_is_a_format_error(dialect: Dialect) -> None:
    assert isinstance(dialect.parse(None), FormatFeedback)  # type: ignore[arg-type]
    assert isinstance(dialect.parse(b"<ask>hi</ask>"), FormatFeedback)  # type: ignore[arg-type]


def test_lone_surrogates_are_replaced() -> None:
    out = AGENTCLINIC.parse("Any pain\ud800?")
    assert out == AskPatient("Any pain\ufffd?")


# --- rendering and conversations ------------------------------------------------------------------


@FEW
@given(obs=any_observation())
def test_every_observation_renders(dialect: Dialect, obs) -> None:  # noqa: ANN001
    assert isinstance(dialect.render_observation(obs), str)


@FEW
@given(action=any_action())
def test_every_action_renders(dialect: Dialect, action) -> None:  # noqa: ANN001
    assert isinstance(dialect.render_action(action), str)


def test_render_rejects_other_types(dialect: Dialect) -> None:
    with pytest.raises(TypeError):
        dialect.render_action(PatientAnswer("hi"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dialect.render_observation(AskPatient("hi"))  # type: ignore[arg-type]


def test_exam_results_render_names_values_and_missing_exams(dialect: Dialect) -> None:
    obs = ExamResults(
        [
            ExamResult("trop", "Troponin I", "elevated", 2.5, "ng/mL"),
            ExamResult("ECG", "ECG", "ST elevation in II, III, aVF"),
            ExamResult("Unobtainium scan", "", "", found=False),
        ],
        cost=42.0,
    )
    text = dialect.render_observation(obs)
    assert "Troponin I" in text and "elevated" in text and "2.5 ng/mL" in text
    assert "ST elevation in II, III, aVF" in text
    assert '"Unobtainium scan" is not in the exam catalogue' in text
    assert "42" in text


def test_observations_carry_their_text(dialect: Dialect) -> None:
    assert "It started an hour ago." in dialect.render_observation(
        PatientAnswer("It started an hour ago.")
    )
    assert "no action tag" in dialect.render_observation(FormatFeedback("no action tag"))
    assert "budget exhausted" in dialect.render_observation(RuleNotice("budget exhausted"))


def test_system_prompt_states_limits_only_when_set(dialect: Dialect) -> None:
    text = dialect.system_prompt(INTRO)
    assert "8 turns" in text and "250" in text
    bare = dialect.system_prompt(Intro(age=58, sex="male", chief_complaint="chest pain"))
    assert "turns" not in bare and "budget" not in bare


def test_intro_names_the_patient(dialect: Dialect) -> None:
    text = dialect.render_intro(INTRO)
    assert "58" in text and "crushing chest pain" in text


def _steps(d: Dialect) -> list[Step]:
    return [
        Step(
            text="<think>hmm</think>" + d.render_action(AskPatient("When did it start?")),
            action=AskPatient("When did it start?"),
            observation=PatientAnswer("An hour ago."),
        ),
        Step(  # a structured backend: no text, the action is rendered
            text="",
            action=OrderExam(["Troponin I"]),
            observation=ExamResults([ExamResult("Troponin I", "Troponin I", "high")]),
        ),
        Step(text="I am not sure.", action=None, observation=FormatFeedback("no action found")),
    ]


def test_chat_structure(dialect: Dialect) -> None:
    steps = _steps(dialect)
    messages = dialect.chat(INTRO, steps)
    assert [m["role"] for m in messages] == ["system", "user"] + ["assistant", "user"] * 3
    assert all(set(m) == {"role", "content"} for m in messages)
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)
    assert messages[0]["content"] == dialect.system_prompt(INTRO)
    assert messages[1]["content"] == dialect.render_intro(INTRO)
    assert messages[2]["content"] == steps[0].text
    assert messages[4]["content"] == dialect.render_action(OrderExam(["Troponin I"]))
    assert messages[6]["content"] == "I am not sure."
    for i, step in enumerate(steps):
        assert messages[3 + 2 * i]["content"] == dialect.render_observation(step.observation)
    assert dialect.chat(INTRO, []) == messages[:2]


def test_prompt_is_a_transcript_ending_at_the_agents_turn(dialect: Dialect) -> None:
    steps = _steps(dialect)
    text = dialect.prompt(INTRO, steps)
    for m in dialect.chat(INTRO, steps):
        assert m["content"] in text
    speaker = {"native": "Assistant", "diaggym": "assistant", "agentclinic": "Doctor"}
    assert text.endswith(f"{dialect.separator}{speaker[dialect.name]}:")
    assert dialect.stop and all(isinstance(s, str) and s for s in dialect.stop)
    # the transcript's own user turns start with one of the stop strings
    assert any(s in text for s in dialect.stop)


# --- native ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<ask>Any fever?</ask>", AskPatient("Any fever?")),
        ("<ASK>  Any fever? \n</Ask>", AskPatient("Any fever?")),
        ("< exam >CBC</ exam >", OrderExam(["CBC"])),
        (
            "<exam>CBC; Chest X-ray ;; Troponin I;</exam>",
            OrderExam(["CBC", "Chest X-ray", "Troponin I"]),
        ),
        ("<exam>Bilirubin, Total</exam>", OrderExam(["Bilirubin, Total"])),
        ("<exam>\n  CBC\n  Lipase\n</exam>", OrderExam(["CBC", "Lipase"])),
        ("<diagnosis>STEMI</diagnosis>", Diagnose("STEMI")),
        (
            "<diagnosis>STEMI</diagnosis>\n<differential>NSTEMI; Aortic dissection</differential>",
            Diagnose("STEMI", ["NSTEMI", "Aortic dissection"]),
        ),
        # the last complete action tag wins; models reason before they act
        (
            "<exam>CBC</exam> then, having seen it, <diagnosis>Anaemia</diagnosis>",
            Diagnose("Anaemia"),
        ),
        (
            "<diagnosis>Anaemia</diagnosis> hmm, not yet: <ask>Any bleeding?</ask>",
            AskPatient("Any bleeding?"),
        ),
        ("I could write <diagnosis> later. <exam>CBC</exam>", OrderExam(["CBC"])),
        ("<exam>CBC</exam> and maybe a <diagnosis> after", OrderExam(["CBC"])),
        # think blocks are ignored, closed, unclosed or opened in the prompt
        ("<think>surely <diagnosis>MI</diagnosis></think><exam>ECG</exam>", OrderExam(["ECG"])),
        ("<exam>ECG</exam><think>or <diagnosis>MI</diagnosis>", OrderExam(["ECG"])),
        (
            "reasoning <diagnosis>MI</diagnosis></think><ask>Pain now?</ask>",
            AskPatient("Pain now?"),
        ),
        ("<THINK>a</THINK><think>b<think>c</think><ask>q</ask>", AskPatient("q")),
        # a nested tag abandons the outer one
        ("<ask>what about <exam>CBC</exam> then</ask>", OrderExam(["CBC"])),
        ("<differential>A; B</differential><diagnosis>C</diagnosis>", Diagnose("C", ["A", "B"])),
        ("<differential>A</differential><exam>CBC</exam>", OrderExam(["CBC"])),
    ],
)
def test_native_examples(text: str, expected: object) -> None:
    assert NATIVE.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("I will not give a <diagnosis> yet", "never closed"),
        ("<diagnosis>MI", "never closed"),
        ("<diagnosis>MI</exam>", "never closed"),
        ("Diagnosis: MI", "no action tag"),
        ("<diagnosis>  </diagnosis>", "empty"),
        ("<exam> ; ;</exam>", "no exam"),
        ("<ask></ask>", "empty"),
        ("<think>I think <diagnosis>MI</diagnosis>", "unclosed <think>"),
        ("<differential>A; B</differential>", "no action tag"),
        ("correct", "no action tag"),
    ],
)
def test_native_format_errors(text: str, complaint: str) -> None:
    out = NATIVE.parse(text)
    assert isinstance(out, FormatFeedback), out
    assert complaint in out.error
    assert "<diagnosis>name</diagnosis>" in out.error  # says what was expected


def test_native_renders_several_exams_in_one_tag() -> None:
    assert NATIVE.render_action(OrderExam(["CBC", "ECG"])) == "<exam>CBC; ECG</exam>"
    assert NATIVE.render_action(Diagnose("MI", ["PE"])) == (
        "<diagnosis>MI</diagnosis>\n<differential>PE</differential>"
    )


# --- diaggym --------------------------------------------------------------------------------------

LEAD = (
    "Based on the patient's initial presentation, the following investigation(s) should be "
    "performed:"
)
STOP = "The available information is sufficient to make a diagnosis."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # DiagAgent's own output shapes
        (
            f"Current diagnosis: Suspected ACS\n{LEAD} Troponin I.\nReason: rule out MI",
            OrderExam(["Troponin I"]),
        ),
        (
            f"Current diagnosis: pneumonia\n{LEAD} CHEST (PORTABLE AP)\nReason: infiltrate?",
            OrderExam(["CHEST (PORTABLE AP)"]),
        ),
        (
            f"{STOP} \n\nDiagnosis: Acute appendicitis\nReason: RLQ pain",
            Diagnose("Acute appendicitis"),
        ),
        # the transformers evaluation pre-fills "Current diagnosis:"
        (f" Suspected ACS\n{LEAD} ECG\nReason: x", OrderExam(["ECG"])),
        # older phrasing, commas kept, ";" separates, brackets unwrapped
        ("More information is needed: Bilirubin, Total", OrderExam(["Bilirubin, Total"])),
        (f"{LEAD} [Lipase]; Amylase", OrderExam(["Lipase", "Amylase"])),
        (f"{LEAD}\nLipase\nReason: pancreatitis", OrderExam(["Lipase"])),
        ("**Final Diagnosis:** Acute pancreatitis.", Diagnose("Acute pancreatitis")),
        ("Diagnosis:\n  Acute pancreatitis\nReason: lipase", Diagnose("Acute pancreatitis")),
        (
            f"{STOP}\n\nDiagnosis: MI\nDifferential: PE; Dissection\nReason: x",
            Diagnose("MI", ["PE", "Dissection"]),
        ),
        ("Question: Does the pain radiate?", AskPatient("Does the pain radiate?")),
        # the last action line wins; labels are read at line starts only
        (f"Diagnosis: MI\n{LEAD} ECG", OrderExam(["ECG"])),
        (f"{LEAD} ECG\nQuestion: any pain now?", AskPatient("any pain now?")),
        ("Question: Was this performed: surgery?", AskPatient("Was this performed: surgery?")),
        (
            f"Current diagnosis: MI\n{LEAD} ECG\nReason: more detail is needed: rhythm",
            OrderExam(["ECG"]),
        ),
        (f"<think>Diagnosis: MI</think>Current diagnosis: MI\n{LEAD} ECG", OrderExam(["ECG"])),
    ],
)
def test_diaggym_examples(text: str, expected: object) -> None:
    assert DIAGGYM.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (STOP, "no 'Diagnosis:' line"),
        ("Current diagnosis: MI\nReason: ECG", "no exam request"),
        ("I believe the diagnosis is MI", "no exam request"),
        (f"{LEAD} \nReason: x", "names no exam"),
        ("Diagnosis:   \nReason: x", "empty"),
        ("Question:", "empty"),
    ],
)
def test_diaggym_format_errors(text: str, complaint: str) -> None:
    out = DIAGGYM.parse(text)
    assert isinstance(out, FormatFeedback), out
    assert complaint in out.error
    assert "should be performed:" in out.error


def test_diaggym_renders_diagagent_phrases() -> None:
    exam = DIAGGYM.render_action(OrderExam(["Lipase"]))
    # DiagGym's own extractor reads line 2 after "performed:"
    assert exam.split("\n")[1].split("performed:")[1].strip() == "Lipase"
    assert exam.startswith("Current diagnosis:")
    dx = DIAGGYM.render_action(Diagnose("Acute pancreatitis"))
    assert STOP in dx
    assert dx.split("Diagnosis:")[1].split("Reason:")[0].strip() == "Acute pancreatitis"
    assert DIAGGYM.render_intro(INTRO).startswith("- Patient Information: 58 y/o M\n")
    obs = DIAGGYM.render_observation(ExamResults([ExamResult("Lipase", "Lipase", "1200 U/L")]))
    assert obs == "Here is the test result: Lipase: 1200 U/L"


# --- agentclinic ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How long have you had the pain?", AskPatient("How long have you had the pain?")),
        ("  Do you smoke?\nAnd drink?  ", AskPatient("Do you smoke?\nAnd drink?")),
        ("REQUEST TEST: Chest_X-Ray", OrderExam(["Chest_X-Ray"])),
        ("Let me check. REQUEST TEST: Troponin I.", OrderExam(["Troponin I"])),
        (
            "REQUEST TEST: CBC\nREQUEST TEST: Bilirubin, Total",
            OrderExam(["CBC", "Bilirubin, Total"]),
        ),
        ("request test: [ECG]", OrderExam(["ECG"])),
        ("DIAGNOSIS READY: Myasthenia gravis", Diagnose("Myasthenia gravis")),
        ("Thank you. DIAGNOSIS READY: [Myasthenia gravis].", Diagnose("Myasthenia gravis")),
        (
            "DIAGNOSIS READY: MI\nDIFFERENTIAL: PE; Dissection",
            Diagnose("MI", ["PE", "Dissection"]),
        ),
        # the last marker wins; only the tests after the last diagnosis marker are ordered
        ("REQUEST TEST: CBC\nDIAGNOSIS READY: Anaemia", Diagnose("Anaemia")),
        ("DIAGNOSIS READY: MI\nREQUEST TEST: ECG", OrderExam(["ECG"])),
        (
            "REQUEST TEST: A\nDIAGNOSIS READY: X\nREQUEST TEST: B\nREQUEST TEST: C",
            OrderExam(["B", "C"]),
        ),
        ("REQUEST TEST: A REQUEST TEST: B", OrderExam(["A", "B"])),
        # no colon, no marker: the doctor is talking to the patient
        (
            "I am not DIAGNOSIS READY yet; tell me more.",
            AskPatient("I am not DIAGNOSIS READY yet; tell me more."),
        ),
        ("Can I REQUEST TEST results later?", AskPatient("Can I REQUEST TEST results later?")),
        ("<think>DIAGNOSIS READY: MI</think>Where is the pain?", AskPatient("Where is the pain?")),
    ],
)
def test_agentclinic_examples(text: str, expected: object) -> None:
    assert AGENTCLINIC.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("DIAGNOSIS READY:", "names no diagnosis"),
        ("DIAGNOSIS READY: []", "names no diagnosis"),
        ("REQUEST TEST:  \n", "names no test"),
        ("<think>Where is the pain?", "unclosed <think>"),
    ],
)
def test_agentclinic_format_errors(text: str, complaint: str) -> None:
    out = AGENTCLINIC.parse(text)
    assert isinstance(out, FormatFeedback), out
    assert complaint in out.error
    assert "REQUEST TEST: [test]" in out.error


def test_agentclinic_renders_its_phrases() -> None:
    assert AGENTCLINIC.render_action(OrderExam(["CBC", "ECG"])) == (
        "REQUEST TEST: CBC\nREQUEST TEST: ECG"
    )
    assert AGENTCLINIC.render_action(Diagnose("MI")) == "DIAGNOSIS READY: MI"
    assert AGENTCLINIC.render_action(AskPatient("Any fever?")) == "Any fever?"
    one = ExamResults([ExamResult("ECG", "ECG", "sinus rhythm")])
    assert AGENTCLINIC.render_observation(one) == "RESULTS: ECG: sinus rhythm"
    assert AGENTCLINIC.render_observation(PatientAnswer("Yes, doctor.")) == "Yes, doctor."
    assert AGENTCLINIC.prompt(INTRO, []).endswith("Doctor:")
