"""Judges: the rules judge's ICD-10-CM hierarchy credit; the LLM judge against a fake server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.judge import (
    LLMJudge,
    LLMJudgeConfig,
    RulesJudge,
    RulesJudgeConfig,
    diagnosis_code,
    exam_scores,
    icd10_chapter,
    icd10_code,
    icd10_relation,
    parse_llm_verdict,
)
from actors.openai_api import EndpointConfig
from cases import builtin
from engine.actor import ActorError, ConfigError
from protocols import decode, encode
from protocols.case import Case, Demographics, Diagnosis, PatientProfile
from protocols.messages import Diagnose, ScoreRequest, Verdict
from tests.fake_openai import serve_fake_openai

CASES = builtin(300)


def make_case(name: str, icd10: str, synonyms: list[str] | None = None, key=None) -> Case:
    return Case(
        id=f"t-{icd10}",
        profile=PatientProfile(
            demographics=Demographics(age=50, sex="male"), chief_complaint="cough"
        ),
        key_exams=key or ["chest X-ray", "white blood cell count"],
        diagnosis=Diagnosis(name=name, icd10=icd10, synonyms=synonyms or []),
    )


PNEUMONIA = make_case("Pneumonia, unspecified organism", "J18.9", ["pneumonia"])


def request(case: Case, name: str | None, exams: list[str] | None = None, **kw) -> ScoreRequest:
    fields: dict[str, Any] = {"cost": 10.0, "turns": 4, "format_errors": 0, **kw}
    dx = Diagnose(name=name) if name is not None else None
    return ScoreRequest(episode_id="ep", case=case, diagnosis=dx, exams=exams or [], **fields)


def rules(case: Case, name: str | None, judge: RulesJudge | None = None, **kw) -> Verdict:
    return (judge or RulesJudge()).score(request(case, name, **kw))


# --- ICD-10-CM hierarchy -------------------------------------------------------------------------


def test_codes_typed_and_invalid() -> None:
    assert icd10_code("J18.9") == icd10_code(" j189 ") == "J18.9"
    assert icd10_code("J18") == "J18"
    assert icd10_code("J18.7") == ""  # well-formed, not in ICD-10-CM
    assert icd10_code("Z99.999") == icd10_code("XYZ") == icd10_code("10") == ""
    assert icd10_code("J09-J18") == ""  # a block is not a diagnosis
    assert diagnosis_code("Lobar pneumonia, unspecified organism") == ("J18.1", "description")
    assert diagnosis_code("pneumonia, unspecified organism") == ("J18.9", "description")
    assert diagnosis_code("I21.9") == ("I21.9", "typed")
    assert diagnosis_code("heart attack")[1] == "bank"
    assert diagnosis_code("purple elbows") == ("", "")


def test_relations() -> None:
    assert icd10_relation("J18.9", "J18.9") == "same"
    assert icd10_relation("J18.9", "J18.1") == "category"
    assert icd10_relation("J18", "J18.9") == icd10_relation("J18.9", "J18") == "category"
    assert icd10_relation("G43.009", "G43.109") == "category"
    assert icd10_relation("J18.9", "J15.9") == "block"  # J09-J18 influenza and pneumonia
    assert icd10_relation("J18.9", "I21.9") == "none"
    # a code ICD-10-CM does not hold (another edition's) is compared as a string
    assert icd10_relation("J18.9", "J18.7") == "category"
    assert icd10_relation("J18.9", "J15.77") == "none"
    assert icd10_relation("", "J18.9") == icd10_relation("banana", "J18.9") == "none"


def test_hierarchy_partial_credit() -> None:
    full = rules(PNEUMONIA, "J18.9")
    assert (full.correct, full.diagnosis_score, full.match) == (True, 1.0, "icd10")
    for name in ("J18.1", "Lobar pneumonia, unspecified organism", "J18"):
        v = rules(PNEUMONIA, name)
        assert (v.correct, v.diagnosis_score, v.match) == (False, 0.5, "icd10-partial"), name
    for name in ("I21.9", "acute myocardial infarction", "J18.7", "Z99.999", "J15.9"):
        v = rules(PNEUMONIA, name)
        assert (v.correct, v.diagnosis_score, v.match) == (False, 0.0, "none"), name
    block = RulesJudge(RulesJudgeConfig(icd10_block_partial=0.1))
    v = rules(PNEUMONIA, "J15.9", block)
    assert (v.correct, v.diagnosis_score, v.match) == (False, 0.1, "icd10-block")
    assert v.components["diagnosis"] == pytest.approx(0.1)
    assert rules(PNEUMONIA, "I21.9", block).diagnosis_score == 0.0
    never = RulesJudge(RulesJudgeConfig(icd10_partial=1.0))
    v = rules(PNEUMONIA, "J18.1", never)
    assert v.diagnosis_score == 1.0 and not v.correct  # partial credit is never correct
    assert RulesJudge.from_config({"icd10_block_partial": 0.2}).config.icd10_block_partial == 0.2


def test_chapter_partial_credit_for_the_right_organ_system() -> None:
    chapter = RulesJudge(RulesJudgeConfig(icd10_chapter_partial=0.1))
    # asthma (J45) and pneumonia (J18): respiratory, another block
    v = rules(PNEUMONIA, "asthma exacerbation", chapter)
    assert (v.correct, v.diagnosis_score, v.match) == (False, 0.1, "icd10-chapter")
    assert rules(PNEUMONIA, "acute myocardial infarction", chapter).diagnosis_score == 0.0
    assert rules(PNEUMONIA, "J18.1", chapter).diagnosis_score == 0.5  # the category wins
    assert rules(PNEUMONIA, "asthma exacerbation").diagnosis_score == 0.0  # off by default
    with pytest.raises(ConfigError):
        RulesJudge.from_config({"icd10_chapter_partial": 1.5})


@pytest.mark.parametrize(
    ("code", "chapter"),
    [("A41.9", 1), ("B99", 1), ("C34.90", 2), ("D49.9", 2), ("D50.0", 3), ("E11.9", 4),
     ("F32.9", 5), ("G40.909", 6), ("H10.9", 7), ("H66.90", 8), ("I21.9", 9), ("J18.9", 10),
     ("K35.80", 11), ("L03.90", 12), ("M17.11", 13), ("N39.0", 14), ("O00.90", 15),
     ("O9A.119", 15), ("P07.30", 16), ("Q21.1", 17), ("R51.9", 18), ("S72.001A", 19),
     ("T78.40XA", 19), ("U07.1", 22), ("V43.52XA", 20), ("Y92.009", 20), ("Z99.89", 21),
     ("", 0), ("12", 0)],
)  # fmt: skip
def test_icd10_chapters(code: str, chapter: int) -> None:
    assert icd10_chapter(code) == chapter


def test_case_with_an_invalid_or_missing_code() -> None:
    odd = make_case("mystery fever", "J18.77")  # well-formed, not in ICD-10-CM
    assert rules(odd, "J18.77").correct  # the same string is the same code
    assert rules(odd, "J18.9").diagnosis_score == 0.5  # string fallback: same category
    assert rules(odd, "I21.9").diagnosis_score == 0.0
    none = make_case("mystery fever", "")
    assert rules(none, "J18.9").match == "none"
    assert rules(none, "Mystery fever").correct


def test_anchor_bugs() -> None:
    correct = make_case("Correct", "", ["right answer"])
    for name in ("Incorrect", "incorrect", "not correct", "not the right answer", "correctness"):
        assert not rules(correct, name).correct, name
    assert rules(correct, "correct.").correct
    for name in ("not pneumonia", "pneumonia ruled out", "Incorrect", "J18.9 or I21.9", ""):
        v = rules(PNEUMONIA, name)
        assert not v.correct and v.diagnosis_score == 0.0, name
    assert parse_llm_verdict("Yes.") == ("yes", "")
    assert parse_llm_verdict("Incorrect") is None
    assert parse_llm_verdict("correct") is None


@settings(max_examples=200, deadline=None)
@given(
    ordered=st.lists(st.sampled_from(["chest X-ray", "white blood cell count", "lipase", "x"])),
    key=st.lists(
        st.sampled_from(["chest X-ray", "white blood cell count", "complete blood count"])
    ),
)
def test_f1_never_exceeds_one(ordered: list[str], key: list[str]) -> None:
    p, r, f1 = exam_scores(ordered * 3, key * 2)
    assert 0.0 <= min(p, r, f1) and max(p, r, f1) <= 1.0


def test_every_component_in_the_verdict_and_on_the_wire() -> None:
    v = rules(PNEUMONIA, "J18.1", exams=["chest X-ray", "lipase"], format_errors=1, leaks=1)
    assert set(v.components) == {"diagnosis", "exam_f1", "cost", "turns", "format_errors", "leaks"}
    assert v.reward == pytest.approx(sum(v.components.values()))
    assert v.components["diagnosis"] == pytest.approx(0.5)
    assert decode(encode(v)) == v


def test_bank_cases_still_judged_by_name() -> None:
    judge = RulesJudge()
    for case in CASES[:100]:
        assert rules(case, case.diagnosis.name, judge).match == "exact"
        v = rules(case, case.diagnosis.icd10, judge)
        assert v.correct and v.match in ("icd10", "synonym", "exact"), case.diagnosis


# --- LLM judge -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"match": "yes", "reason": "same disease"}', ("yes", "same disease")),
        ('  {"match": "no", "reason": "different organ"}\n', ("no", "different organ")),
        ('```json\n{"match": "partial", "reason": "subtype"}\n```', ("partial", "subtype")),
        ('```\n{"match": "Yes."}\n```', ("yes", "")),
        ('{"match": "YES", "reason": ""}', ("yes", "")),
        ("Yes.", ("yes", "")),
        (" no ", ("no", "")),
        ("Incorrect", None),
        ("The answer is yes.", None),
        ("yes, it is correct", None),
        ('{"match": "correct"}', None),
        ('{"match": "yes", "reason": "x", "confidence": 0.9}', None),
        ('{"match": true}', None),
        ('["yes"]', None),
        ('Sure! {"match": "yes", "reason": "x"}', None),
        ("", None),
    ],
)
def test_parse_llm_verdict(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_llm_verdict(text) == expected


def _answer(match: str) -> str:
    return json.dumps({"match": match, "reason": "because"})


async def _judge(script, **config: Any) -> tuple[list[Verdict | Exception], list[dict]]:
    """Score each (case, name) of `script` with an LLM judge whose endpoint answers by `reply`."""
    seen: list[dict] = []
    answers: list[str] = []

    def reply(path: str, body: dict) -> str:
        seen.append(body)
        text = answers.pop(0)
        if text == "HTTP 500":
            raise RuntimeError("model exploded")
        return text

    out: list[Verdict | Exception] = []
    async with trio.open_nursery() as nursery:
        url = await serve_fake_openai(nursery, reply)
        judge = LLMJudge.from_config({"endpoint": {"base_url": url, "model": "judge"}, **config})
        for case, name, texts in script:
            answers[:] = list(texts)
            try:
                out.append(await judge.score(request(case, name, exams=["chest X-ray"])))
            except ActorError as exc:
                out.append(exc)
        await judge.close()
        nursery.cancel_scope.cancel()
    return out, seen


async def test_llm_judge_yes_no_partial() -> None:
    verdicts, seen = await _judge(
        [
            (PNEUMONIA, "lung infection", [_answer("yes")]),
            (PNEUMONIA, "bronchitis", [_answer("no")]),
            (PNEUMONIA, "J18.1", [_answer("partial")]),
        ]
    )
    yes, no, partial = verdicts
    assert isinstance(yes, Verdict) and isinstance(no, Verdict) and isinstance(partial, Verdict)
    assert (yes.correct, yes.diagnosis_score, yes.match) == (True, 1.0, "llm-yes")
    assert (no.correct, no.diagnosis_score, no.match) == (False, 0.0, "llm-no")
    assert (partial.correct, partial.diagnosis_score, partial.match) == (False, 0.5, "llm-partial")
    rules_v = RulesJudge().score(request(PNEUMONIA, "bronchitis", exams=["chest X-ray"]))
    for v in verdicts:  # exams, cost and weights are the rules judge's
        assert (v.exam_f1, v.cost, v.turns) == (rules_v.exam_f1, rules_v.cost, rules_v.turns)
        assert v.reward == pytest.approx(sum(v.components.values()))
    assert len(seen) == 3
    prompt = seen[0]["messages"]
    assert prompt[0]["role"] == "system" and '"match"' in prompt[0]["content"]
    user = prompt[1]["content"]
    assert "Pneumonia, unspecified organism" in user and "J18.9" in user
    assert '"lung infection"' in user
    assert seen[0]["model"] == "judge"


async def test_llm_judge_not_asked_for_full_rules_matches_or_nothing() -> None:
    verdicts, seen = await _judge(
        [(PNEUMONIA, "pneumonia", []), (PNEUMONIA, "J18.9", []), (PNEUMONIA, None, [])]
    )
    assert [v.match for v in verdicts] == ["synonym", "icd10", "none"]  # type: ignore[union-attr]
    assert seen == []
    verdicts, seen = await _judge([(PNEUMONIA, "pneumonia", [_answer("no")])], rules_first=False)
    assert verdicts[0].match == "llm-no" and len(seen) == 1  # type: ignore[union-attr]


async def test_llm_judge_garbage_retries_once_then_falls_back() -> None:
    verdicts, seen = await _judge(
        [
            (PNEUMONIA, "lung infection", ["Incorrect", _answer("yes")]),  # retry succeeds
            (PNEUMONIA, "J18.1", ["The answer is correct", "yes it is"]),  # both garbage
            (PNEUMONIA, "bronchitis", ["???", "Incorrect"]),
        ]
    )
    retried, fallback, wrong = verdicts
    assert isinstance(retried, Verdict) and retried.match == "llm-yes" and retried.correct
    assert isinstance(fallback, Verdict)
    assert (fallback.correct, fallback.diagnosis_score, fallback.match) == (
        False,
        0.5,  # the rules' ICD-10 category credit
        "llm-unparsed",
    )
    assert isinstance(wrong, Verdict) and (wrong.correct, wrong.diagnosis_score) == (False, 0.0)
    assert len(seen) == 6
    second = seen[1]["messages"]  # the retry shows the bad answer and asks again
    assert second[-2] == {"role": "assistant", "content": "Incorrect"}
    assert "JSON" in second[-1]["content"]


async def test_llm_judge_http_500() -> None:
    verdicts, _ = await _judge([(PNEUMONIA, "lung infection", ["HTTP 500"])])
    assert isinstance(verdicts[0], ActorError)
    assert "llm judge" in verdicts[0].message and "HTTP 500" in verdicts[0].message
    verdicts, _ = await _judge([(PNEUMONIA, "J18.1", ["HTTP 500"])], on_error="rules")
    v = verdicts[0]
    assert isinstance(v, Verdict) and (v.diagnosis_score, v.match) == (0.5, "llm-error")


def test_llm_judge_config() -> None:
    endpoint = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    judge = LLMJudge.from_config({"endpoint": endpoint, "partial": 0.3, "rules": {"cost": -0.01}})
    assert judge.config.partial == 0.3 and judge.config.rules.cost == -0.01
    assert judge.config.endpoint == EndpointConfig("http://127.0.0.1:9/v1", "m")
    assert LLMJudge.service == "judge" and set(judge.handlers()) == {ScoreRequest}
    for raw in (
        {"endpoint": endpoint, "partal": 0.3},
        {"endpoint": endpoint, "on_error": "ignore"},
        {"endpoint": endpoint, "rules": {"diagnossis": 1}},
        {},
    ):
        with pytest.raises(ConfigError):
            LLMJudge.from_config(raw)
    assert isinstance(LLMJudgeConfig(EndpointConfig("u", "m")).rules, RulesJudgeConfig)


async def test_llm_judge_fallback_keeps_a_full_rules_match_correct() -> None:
    verdicts, seen = await _judge(
        [(PNEUMONIA, "pneumonia", ["nope", "still nope"])], rules_first=False
    )
    v = verdicts[0]
    assert isinstance(v, Verdict) and len(seen) == 2
    assert (v.correct, v.diagnosis_score, v.match) == (True, 1.0, "llm-unparsed")
    verdicts, _ = await _judge([(PNEUMONIA, "pneumonia", [_answer("partial")])], rules_first=False)
    v = verdicts[0]
    assert isinstance(v, Verdict) and (v.correct, v.diagnosis_score) == (False, 0.5)
