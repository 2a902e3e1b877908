"""Building a PredictionResult from the model's outputs: label, subtype, model version, checks."""

from __future__ import annotations

import numpy as np
import pytest

from services.worker.errors import ModelServerError
from services.worker.grpc_serving import ServingAnswer
from services.worker.result import build_result, label_for, subtype_for
from shared.schemas import ClassProbabilities


def answer(p: float, classes: tuple[float, float, float], threshold: float, version: int = 7,
           ) -> ServingAnswer:
    return ServingAnswer(
        model_name="cxr-pneumonia",
        version=version,
        outputs={
            "pneumonia_probability": np.array([p], np.float32),
            "class_probabilities": np.array([classes], np.float32),
            "threshold": np.array([threshold], np.float32),
        },
    )


def test_pneumonia_above_threshold_takes_the_likelier_subtype():
    result = build_result(answer(0.9, (0.1, 0.3, 0.6), 0.4), timings_ms={"total": 12.5})
    assert result.label == "PNEUMONIA"
    assert result.subtype == "viral"
    assert result.pneumonia_probability == pytest.approx(0.9)
    assert result.class_probabilities.bacterial == pytest.approx(0.3)
    assert result.threshold == pytest.approx(0.4)
    assert (result.model.name, result.model.version) == ("cxr-pneumonia", 7)
    assert result.timings_ms == {"total": 12.5}


def test_the_model_threshold_decides_not_one_half():
    # 0.3 is below one half but above this model's sensitivity-first operating point.
    assert build_result(answer(0.3, (0.7, 0.2, 0.1), 0.25)).label == "PNEUMONIA"
    assert build_result(answer(0.6, (0.4, 0.5, 0.1), 0.65)).label == "NORMAL"


def test_normal_has_no_subtype():
    result = build_result(answer(0.1, (0.9, 0.06, 0.04), 0.5))
    assert result.label == "NORMAL"
    assert result.subtype is None


def test_threshold_itself_counts_as_pneumonia():
    assert label_for(0.5, 0.5) == "PNEUMONIA"
    assert label_for(np.nextafter(0.5, 0), 0.5) == "NORMAL"


def test_subtype_bacterial_when_larger():
    probs = ClassProbabilities(normal=0.2, bacterial=0.5, viral=0.3)
    assert subtype_for("PNEUMONIA", probs) == "bacterial"
    assert subtype_for("NORMAL", probs) is None


def test_float32_rounding_above_one_is_clipped():
    result = build_result(answer(1.0000001, (0.0, 1.0000001, 0.0), 0.5))
    assert result.pneumonia_probability == 1.0


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.2])
def test_a_value_that_is_not_a_probability_is_refused(bad):
    with pytest.raises(ModelServerError, match="not a probability"):
        build_result(answer(bad, (0.2, 0.4, 0.4), 0.5))


def test_class_probabilities_of_the_wrong_width_are_refused():
    broken = answer(0.5, (0.2, 0.4, 0.4), 0.5)
    broken.outputs["class_probabilities"] = np.array([[0.5, 0.5]], np.float32)
    with pytest.raises(ModelServerError, match="shape"):
        build_result(broken)


def test_picks_the_requested_row_of_a_batch():
    batch = ServingAnswer("m", 3, {
        "pneumonia_probability": np.array([0.1, 0.8], np.float32),
        "class_probabilities": np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]], np.float32),
        "threshold": np.array([0.5, 0.5], np.float32),
    })
    second = build_result(batch, index=1)
    assert (second.label, second.subtype) == ("PNEUMONIA", "bacterial")
