import json

import numpy as np
import pytest

from scripts.operating_point_transfer import rates, transfer


def test_rates_call_pneumonia_at_or_above_the_threshold():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.2, 0.5, 0.5, 0.9])
    assert rates(y, p, 0.5) == {"sensitivity": 1.0, "specificity": 0.5}
    assert rates(y, p, 0.6) == {"sensitivity": 0.5, "specificity": 1.0}


def test_the_gate_point_and_the_window_by_hand():
    # Gate set: 4 pneumonia films at 0.4 0.6 0.7 0.8, 2 normal at 0.1 0.2. With target 0.75, the
    # most specific threshold that still catches 3 of 4 is 0.6.
    gate_y = np.array([1, 1, 1, 1, 0, 0])
    gate_p = np.array([0.4, 0.6, 0.7, 0.8, 0.1, 0.2])
    # Later period: pneumonia at 0.65 0.9 0.95 0.97; normal at 0.3 0.5 0.55 0.66.
    data_y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    data_p = np.array([0.65, 0.9, 0.95, 0.97, 0.3, 0.5, 0.55, 0.66])
    result = transfer(gate_y, gate_p, data_y, data_p, 0.7, target_sensitivity=0.75,
                      specificity_floor=0.75)
    assert result["own"]["threshold"] == 0.7
    assert result["own"]["gate"] == {"sensitivity": 0.5, "specificity": 1.0}
    assert result["own"]["data"] == {"sensitivity": 0.75, "specificity": 1.0}
    assert result["gate_point"]["threshold"] == pytest.approx(0.6)
    assert result["gate_point"]["data"] == {"sensitivity": 1.0, "specificity": 0.75}
    # Gate sensitivity >= 0.75 needs t <= 0.6; later-period specificity >= 0.75 (3 of 4 normals
    # under t) needs t > 0.55: of the scores, only 0.6 is in both.
    assert result["window"] == [pytest.approx(0.6), pytest.approx(0.6)]


def test_no_window_when_the_periods_disagree():
    gate_y = np.array([1, 1, 0])
    gate_p = np.array([0.2, 0.9, 0.1])  # catching both gate pneumonias needs t <= 0.2
    data_y = np.array([1, 0])
    data_p = np.array([0.9, 0.3])  # the later normal needs t > 0.3
    result = transfer(gate_y, gate_p, data_y, data_p, 0.5, target_sensitivity=1.0,
                      specificity_floor=1.0)
    assert result["window"] is None
    assert result["gate_point"]["threshold"] == pytest.approx(0.2)
    assert result["gate_point"]["data"]["specificity"] == 0.0


def test_the_command_scores_the_gate_set_and_the_folder(tmp_path, monkeypatch, capsys):
    from scripts.operating_point_transfer import main
    from services.trainer.settings import get_settings
    from tests.support.tiny_model import make_tiny_serving_model
    from tests.trainer.conftest import SAMPLE_DIR

    model = make_tiny_serving_model(tmp_path / "serving", 1, seed=1, threshold=0.4,
                                    image_size=64)
    monkeypatch.setenv("CXR_DATA_DIR", str(SAMPLE_DIR))
    monkeypatch.setenv("CXR_GATE_FRACTION", "0.3")
    get_settings.cache_clear()
    try:
        assert main(["--data", str(SAMPLE_DIR), "--model", str(model),
                     "--json", str(tmp_path / "out.json")]) == 0
    finally:
        get_settings.cache_clear()
    report = json.loads((tmp_path / "out.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    result = report["models"][str(model)]
    assert result["own"]["threshold"] == pytest.approx(0.4)
    assert result["gate_point"]["gate"]["sensitivity"] >= report["target_sensitivity"]


def test_a_floor_outside_zero_to_one_is_refused(capsys):
    from scripts.operating_point_transfer import main

    with pytest.raises(SystemExit) as stopped:
        main(["--data", "x", "--model", "y", "--specificity-floor", "1.5"])
    assert stopped.value.code == 2
    assert "specificity-floor" in capsys.readouterr().err
