"""The promotion gate: pure verdicts on metric dicts, then real SavedModels on a sample gate set."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.data.dataset import scan_dataset
from services.trainer.data.splits import split_gate_set
from services.trainer.registry.gates import GateSet, PromotionGate
from tests.trainer.gate_models import export_quality_models

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
GOOD = {"auroc": 0.99, "sensitivity": 0.97, "specificity": 0.90, "threshold": 0.4, "n": 100}


def test_good_metrics_pass_without_a_champion():
    verdict = PromotionGate().judge(GOOD)
    assert verdict.passed
    assert verdict.reason.startswith("passed")
    assert verdict.as_tags()["gate.passed"] == "true"
    assert verdict.as_tags()["gate.champion_version"] == "none"


@pytest.mark.parametrize("metric,value,check", [
    ("auroc", 0.94, "auroc_floor"),
    ("sensitivity", 0.949, "sensitivity_floor"),
    ("specificity", 0.79, "specificity_floor"),
    ("sensitivity", None, "sensitivity_floor"),
])
def test_each_floor_refuses_on_its_own(metric, value, check):
    verdict = PromotionGate().judge({**GOOD, metric: value})
    assert not verdict.passed
    assert [c.name for c in verdict.checks if not c.passed] == [check]
    assert verdict.as_tags()["gate.passed"] == "false"
    assert metric in verdict.as_tags()["gate.reason"]


def test_regression_against_the_champion_is_bounded():
    gate = PromotionGate(max_auroc_drop=0.01, max_sensitivity_drop=0.02)
    champion = {**GOOD, "auroc": 0.995, "sensitivity": 0.99}
    within = gate.judge({**GOOD, "auroc": 0.986, "sensitivity": 0.971}, champion, 3)
    assert within.passed, within.reason
    assert "champion v3" in within.reason
    worse_auroc = gate.judge({**GOOD, "auroc": 0.98, "sensitivity": 0.99}, champion, 3)
    assert [c.name for c in worse_auroc.checks if not c.passed] == ["auroc_regression"]
    worse_sensitivity = gate.judge({**GOOD, "auroc": 0.995, "sensitivity": 0.96}, champion, 3)
    assert [c.name for c in worse_sensitivity.checks if not c.passed] == [
        "sensitivity_regression"]
    tags = worse_sensitivity.as_tags()
    assert tags["gate.champion.sensitivity"] == "0.990000"
    assert tags["gate.sensitivity"] == "0.960000"


def test_gate_settings_come_from_trainer_settings(monkeypatch):
    from services.trainer.settings import TrainerSettings

    monkeypatch.setenv("CXR_GATE_MIN_AUROC", "0.9")
    gate = PromotionGate.from_settings(TrainerSettings())
    assert gate.min_auroc == 0.9
    assert gate.min_sensitivity == 0.95


def test_gate_split_is_fixed_and_patient_disjoint():
    records = scan_dataset(SAMPLE)
    trainable, held = split_gate_set(records, 0.25, seed=11)
    again_trainable, again_held = split_gate_set(records, 0.25, seed=11)
    assert [r.path for r in held] == [r.path for r in again_held]
    assert [r.path for r in trainable] == [r.path for r in again_trainable]
    assert held and trainable
    assert not {r.patient for r in held} & {r.patient for r in trainable}
    assert {r.label for r in held} == {"NORMAL", "PNEUMONIA"}


@pytest.fixture(scope="module")
def sample_gate_set() -> GateSet:
    return GateSet.from_records(scan_dataset(SAMPLE))


@pytest.fixture(scope="module")
def quality_models(sample_gate_set, tmp_path_factory) -> dict[str, Path]:
    return export_quality_models(tmp_path_factory.mktemp("quality-models"),
                                 sample_gate_set.images, sample_gate_set.is_pneumonia)


def test_gate_accepts_an_informative_model(sample_gate_set, quality_models):
    verdict = PromotionGate().evaluate(sample_gate_set, quality_models["good"])
    assert verdict.passed, verdict.reason
    assert verdict.candidate["auroc"] >= 0.95
    assert verdict.as_tags()["gate.set_fingerprint"] == sample_gate_set.fingerprint


def test_gate_refuses_a_model_that_ranks_backwards(sample_gate_set, quality_models):
    verdict = PromotionGate().evaluate(sample_gate_set, quality_models["inverted"])
    assert not verdict.passed
    assert verdict.candidate["auroc"] < 0.5
    assert "auroc" in verdict.reason and "floor" in verdict.reason


def test_gate_compares_candidate_and_champion_on_the_same_images(sample_gate_set,
                                                                 quality_models):
    no_floors = PromotionGate(min_sensitivity=0, min_specificity=0, min_auroc=0)
    refused = no_floors.evaluate(sample_gate_set, quality_models["random"],
                                 champion_dir=quality_models["good"], champion_version=4)
    assert not refused.passed
    assert refused.champion["n"] == refused.candidate["n"] == len(sample_gate_set.images)
    assert "auroc_regression" in [c.name for c in refused.checks if not c.passed]
    accepted = no_floors.evaluate(sample_gate_set, quality_models["good"],
                                  champion_dir=quality_models["random"], champion_version=4)
    assert accepted.passed, accepted.reason
