"""`reexport` rebuilds an exported version's networks from its variables and answers alike."""

import json

import numpy as np
import pytest
import tensorflow as tf

from services.trainer.artifact.export import export_for_serving
from services.trainer.artifact.reexport import max_output_difference, reexport
from services.trainer.modeling.model import build_cnn


def test_an_ensemble_is_rebuilt_weight_for_weight(tmp_path):
    models = [build_cnn(width=4, seed=1), build_cnn(width=4, seed=2)]
    old = export_for_serving(models, base_path=tmp_path / "old", version=3, threshold=0.4,
                             temperature=1.5, extra_info={"trained_on": "fixture"})
    images = np.random.RandomState(1).randint(0, 256, (2, 224, 224, 1)).astype(np.uint8)
    new, difference = reexport(old, tmp_path / "new", 4, images)
    assert new == tmp_path / "new" / "cxr-pneumonia" / "4"
    assert difference <= 1e-5
    info = json.loads((new / "assets.extra" / "model_info.json").read_text())
    assert (info["version"], info["threshold"], info["temperature"]) == (4, 0.4, 1.5)
    assert (info["ensemble_size"], info["trained_on"], info["reexported_from_version"]) == (
        2, "fixture", 3)
    outputs = tf.saved_model.load(str(new)).signatures["gradcam"](image=tf.constant(images))
    assert {"heatmap", "pneumonia_probability", "class_probabilities", "threshold"} <= set(outputs)


def test_a_different_network_is_noticed(tmp_path):
    images = np.random.RandomState(2).randint(0, 256, (2, 224, 224, 1)).astype(np.uint8)
    one = export_for_serving(build_cnn(width=4, seed=1), base_path=tmp_path / "a", version=1,
                             threshold=0.5)
    other = export_for_serving(build_cnn(width=4, seed=2), base_path=tmp_path / "b", version=1,
                               threshold=0.5)
    assert max_output_difference(one, other, images) > 1e-3
    info_path = one / "assets.extra" / "model_info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "ensemble_size": 2}))
    with pytest.raises(ValueError, match="variables"):
        reexport(one, tmp_path / "c", 1, images)


def test_the_drift_reference_travels_with_the_reexport(tmp_path):
    from services.trainer.artifact.drift_reference import (
        compute_reference,
        reference_path,
        write_reference,
    )
    from shared.drift import DriftReference

    old = export_for_serving(build_cnn(width=4, seed=5), base_path=tmp_path / "old", version=3,
                             threshold=0.5)
    images = np.random.RandomState(3).randint(0, 256, (6, 224, 224, 1)).astype(np.uint8)
    written = write_reference(old, compute_reference(old, images, {"films": "fixture"}))
    new, _ = reexport(old, tmp_path / "new", 4, images)
    assert reference_path(new).read_bytes() == written.read_bytes()
    assert DriftReference.from_json(reference_path(new).read_text()).films == 6
    # A version exported without one gets none.
    bare = export_for_serving(build_cnn(width=4, seed=6), base_path=tmp_path / "bare", version=1,
                              threshold=0.5)
    copy, _ = reexport(bare, tmp_path / "new", 5, images)
    assert not reference_path(copy).exists()


def test_the_cli_checks_the_copy_on_the_sample_xrays(tmp_path, capsys):
    from services.trainer.cli.main import main

    old = export_for_serving(build_cnn(width=4, seed=3), base_path=tmp_path / "old", version=1,
                             threshold=0.5)
    assert main(["reexport", "--model", str(old), "--export-base", str(tmp_path / "new"),
                 "--version", "2"]) == 0
    assert "outputs match the original on 40 images" in capsys.readouterr().out
    assert (tmp_path / "new" / "cxr-pneumonia" / "2" / "saved_model.pb").is_file()
    assert main(["reexport", "--model", str(tmp_path), "--export-base", str(tmp_path / "x"),
                 "--version", "1"]) == 2


def test_the_model_card_and_metrics_travel_with_a_reexport(tmp_path):
    old = export_for_serving(build_cnn(width=4, seed=4), base_path=tmp_path / "old", version=3,
                             threshold=0.5)
    card = "# Model card\nversion 3\n"
    metrics = {"metrics": {"gate.auroc": 0.9}}
    (old / "assets.extra" / "model_card.md").write_text(card)
    (old / "assets.extra" / "metrics.json").write_text(json.dumps(metrics))
    images = np.random.RandomState(4).randint(0, 256, (2, 224, 224, 1)).astype(np.uint8)
    new, _ = reexport(old, tmp_path / "new", 4, images)
    assert (new / "assets.extra" / "model_card.md").read_text() == card
    assert json.loads((new / "assets.extra" / "metrics.json").read_text()) == metrics
    # A version without them gives a re-export without them.
    plain = export_for_serving(build_cnn(width=4, seed=5), base_path=tmp_path / "plain",
                               version=1, threshold=0.5)
    copy, _ = reexport(plain, tmp_path / "plain-new", 2, images)
    assert not (copy / "assets.extra" / "model_card.md").exists()
    assert not (copy / "assets.extra" / "metrics.json").exists()
