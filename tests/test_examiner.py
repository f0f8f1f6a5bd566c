"""The chained Examiner: record -> neighbour -> normal, called directly (no sockets)."""

from __future__ import annotations

from statistics import mean

import msgspec
import pytest
import trio

from actors.examiner import Examiner, ExaminerConfig, RecordExaminer
from cases import builtin, default_catalogue
from engine.actor import ConfigError
from protocols import decode, encode
from protocols.case import Case
from protocols.messages import ExamQuery, ExamReply, ExamResult

CASES = builtin(2000)
CAT = default_catalogue()
EXAMINER = Examiner()  # the default: built-in bank, n=2000, seed=0
NORMAL = Examiner(ExaminerConfig(chain=["normal"]))
WBC = "white blood cell count"


def of(name: str, count: int = 1) -> list[Case]:
    return [c for c in CASES if c.diagnosis.name == name][:count]


def without(case: Case, *names: str) -> Case:
    return msgspec.structs.replace(case, exams=[r for r in case.exams if r.name not in names])


def ask(case: Case, exam: str, examiner: Examiner = EXAMINER, **kw) -> ExamResult:
    return examiner.result(ExamQuery(episode_id="ep", case=case, exam=exam, **kw)).result


def test_config_defaults_and_errors() -> None:
    cfg = Examiner.from_config({}).config
    assert cfg.chain == ["record", "neighbour", "normal"]
    assert (cfg.bank, cfg.bank_args, cfg.k) == ("cases.bank:builtin", {"n": 2000, "seed": 0}, 10)
    assert Examiner.from_config({"chain": ["record", "normal"], "k": 3}).chain == [
        "record",
        "normal",
    ]
    for raw in (
        {"chian": ["record"]},
        {"chain": ["record", "oracle"]},
        {"chain": []},
        {"chain": ["record", "record"]},
        {"chain": ["record", "llm"]},  # no [llm] table
        {"chain": ["llm"], "llm": {"runner": "completions"}},  # no endpoint
        {"chain": ["llm"], "llm": {"runner": "transformers"}},  # no model_path
        {"k": 0},
    ):
        with pytest.raises(ConfigError):
            Examiner.from_config(raw)
    # the old name still works for existing specs, with its old chain
    old = RecordExaminer.from_config({})
    assert old.chain == ["record", "normal"] and old.service == "examiner"
    assert RecordExaminer.from_config({"fallback": "none"}).chain == ["record", "none"]


def test_start_builds_the_index_from_the_bank_import_string() -> None:
    ex = Examiner.from_config({"bank_args": {"n": 60, "seed": 0}})
    trio.run(ex.start)
    assert ex.model is not None and len(ex.model) == 60
    assert set(ex.handlers()) == {ExamQuery}


def test_chain_order_and_fallbacks() -> None:
    case = of("diabetic ketoacidosis")[0]
    rec = next(r for r in case.exams if r.name == "glucose")
    got = ask(case, "blood sugar")
    assert (got.source, got.value, got.result) == ("record", rec.value, rec.result)
    # the record is not consulted when it comes later in the chain
    first_normal = Examiner(ExaminerConfig(chain=["normal", "record"]))
    assert ask(case, "glucose", first_normal).source == "normal"
    # an exam the case lacks: the neighbour model answers, at the catalogue's cost
    assert "lipase" not in {r.name for r in case.exams}
    got = ask(case, "lipase")
    assert got.source == "neighbour" and got.value is not None and got.unit == "U/L"
    assert got.cost == CAT.get("lipase").cost and got.name == "lipase"
    # an exam no bank case holds: on to `normal`
    small = Examiner(index=CASES[:5])
    held = {r.name for c in CASES[:5] for r in c.exams} | {r.name for r in case.exams}
    missing = next(e for e in CAT.entries if e.is_numeric and e.name not in held)
    assert ask(case, missing.name, small).source == "normal"
    # `none` at the end of the chain: "not available"
    none = Examiner(ExaminerConfig(chain=["record", "none"]))
    assert ask(case, "lipase", none).result == "not available"


def test_unknown_exam_is_not_in_the_catalogue() -> None:
    got = ask(CASES[0], "banana scan")
    assert not got.found and got.name == "" and got.cost == 0 and got.source == "catalogue"
    assert "is not in the exam catalogue" in got.result


def test_deterministic_per_case_exam_and_earlier_results() -> None:
    case = of("acute gout")[0]
    query = ExamQuery(episode_id="ep", case=case, exam="lipase")
    first = EXAMINER.result(query)
    again = Examiner(index=CASES).result(decode(encode(query)))  # another worker, a retry
    assert isinstance(first, ExamReply) and first == again
    earlier = [ask(case, "uric acid"), ask(case, "temperature")]
    a = ask(case, "lipase", earlier=earlier)
    b = ask(case, "lipase", earlier=earlier)
    assert a == b and a.source == "neighbour"


def test_the_examined_case_is_not_its_own_neighbour() -> None:
    model = EXAMINER.build_index()
    case = of("acute gout")[0]
    near = model.neighbours(case, "uric acid", k=50)
    assert near and all(cid != case.id for _, cid, _ in near)
    # a copy under another id is found at distance 0: exclusion is by id, nothing else
    twin = msgspec.structs.replace(case, id="twin-of-" + case.id)
    near = model.neighbours(twin, "uric acid", reveal_diagnosis=True, k=50)
    assert any(cid == case.id and d == pytest.approx(0.0) for d, cid, _ in near)


def test_reveal_diagnosis_changes_the_conditioning_and_is_off_by_default() -> None:
    assert ExamQuery(episode_id="e", case=CASES[0], exam="x").reveal_diagnosis is False
    model = EXAMINER.build_index()
    dka = of("diabetic ketoacidosis")[0]
    # no symptoms, a vague complaint: the evidence alone does not point to DKA
    vague = msgspec.structs.replace(
        without(dka, "glucose"),
        id="vague-dka",
        profile=msgspec.structs.replace(dka.profile, symptoms=[], chief_complaint="tiredness"),
    )
    by_id = {c.id: c for c in CASES}

    def share_dka(reveal: bool) -> float:
        near = model.neighbours(vague, "glucose", reveal_diagnosis=reveal, k=10)
        return mean(by_id[cid].diagnosis.name == dka.diagnosis.name for _, cid, _ in near)

    assert share_dka(True) == 1.0
    assert share_dka(False) < 0.5

    def values(reveal: bool) -> float:
        return mean(r.value for _, _, r in model.neighbours(vague, "glucose", [], reveal))

    assert values(True) > 2 * values(False)
    hidden = ask(vague, "glucose", reveal_diagnosis=False)
    shown = ask(vague, "glucose", reveal_diagnosis=True)
    assert hidden.source == shown.source == "neighbour" and hidden != shown
    assert shown.value > 250  # type: ignore[operator]


def test_neighbour_values_follow_the_condition() -> None:
    cases = of("bacterial meningitis", 8)
    drawn = [ask(without(c, WBC), "WBC").value for c in cases]
    normal = [ask(without(c, WBC), "WBC", NORMAL).value for c in cases]
    assert mean(drawn) > CAT.get(WBC).reference.high > mean(normal)  # type: ignore[operator]
    # values come in the catalogue's unit, rounded as the catalogue says
    got = ask(without(cases[0], WBC), "WBC")
    assert got.unit == CAT.get(WBC).unit and got.value == round(got.value, CAT.get(WBC).decimals)


def test_reports_are_copied_from_the_nearest_case() -> None:
    model = EXAMINER.build_index()
    case = of("community-acquired pneumonia")[0]
    hidden = without(case, "chest X-ray")
    got = ask(hidden, "CXR")
    nearest = model.neighbours(hidden, "chest X-ray")[0][2]
    assert got.source == "neighbour" and got.result == nearest.result and got.value is None


def test_panels_answer_their_components() -> None:
    case = of("community-acquired pneumonia")[0]
    comps = CAT.get("complete blood count").panel
    full = ask(case, "CBC")
    assert full.source == "record" and full.value is None
    part = ask(without(case, comps[0]), "CBC")
    assert part.source == "neighbour+record"
    for comp in comps:
        assert f"{comp}: " in part.result
    bare = ask(without(case, *comps), "full blood count")
    assert bare.source == "neighbour" and bare.cost == CAT.get("complete blood count").cost
