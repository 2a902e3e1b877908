"""The scope screen: its outputs in both signatures, bundling it into a version, its training."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from services.trainer.artifact.export import SCOPE_DIR, export_for_serving
from services.trainer.artifact.reexport import max_output_difference, reexport
from services.trainer.modeling.model import build_cnn
from services.trainer.scope.data import LATERAL, OUT_OF_SCOPE_NEGATIVES, pool, synthesise
from services.trainer.scope.model import ScopeScreen
from shared.contract import (
    ATYPICAL_IMAGE,
    GRADCAM_SIGNATURE,
    HEATMAP,
    PNEUMONIA_PROBABILITY,
    SCOPE_CHECKS,
    SCOPE_SCORES,
    SCOPE_THRESHOLDS,
    SERVING_SIGNATURE,
)
from tests.support.tiny_model import make_tiny_serving_model, tiny_scope_screen
from tests.trainer.conftest import SAMPLE_DIR

IMAGES = np.random.RandomState(5).randint(0, 256, (3, 224, 224, 1)).astype(np.uint8)


def _call(version_dir, signature):
    loaded = tf.saved_model.load(str(version_dir))
    return {k: v.numpy() for k, v in loaded.signatures[signature](image=tf.constant(IMAGES))
            .items()}


def test_an_export_with_a_screen_answers_the_scope_outputs_in_both_signatures(tmp_path):
    version = make_tiny_serving_model(tmp_path, 1, scope=True)
    screen = ScopeScreen.load(version / "assets.extra" / SCOPE_DIR)
    for signature in (SERVING_SIGNATURE, GRADCAM_SIGNATURE):
        outputs = _call(version, signature)
        assert outputs[SCOPE_SCORES].shape == (3, len(SCOPE_CHECKS))
        assert outputs[SCOPE_SCORES].dtype == np.float32
        np.testing.assert_array_equal(outputs[SCOPE_THRESHOLDS],
                                      np.tile(screen.thresholds, (3, 1)))
        np.testing.assert_allclose(outputs[SCOPE_SCORES],
                                   screen.scores(pool(IMAGES)), rtol=1e-4, atol=1e-4)
    assert HEATMAP in _call(version, GRADCAM_SIGNATURE)
    info = json.loads((version / "assets.extra" / "model_info.json").read_text())
    assert info["scope"]["checks"] == list(SCOPE_CHECKS)


def test_an_export_without_a_screen_has_no_scope_outputs(tmp_path):
    outputs = _call(make_tiny_serving_model(tmp_path, 1), SERVING_SIGNATURE)
    assert SCOPE_SCORES not in outputs and SCOPE_THRESHOLDS not in outputs
    assert PNEUMONIA_PROBABILITY in outputs


def test_a_screen_with_wrong_thresholds_is_refused(tmp_path):
    screen = tiny_scope_screen()
    screen.thresholds = screen.thresholds[:3]
    with pytest.raises(ValueError, match="thresholds"):
        export_for_serving(build_cnn(width=4), base_path=tmp_path, version=1, threshold=0.5,
                           scope=screen)


def test_bundling_keeps_the_pneumonia_outputs_and_adds_the_screen(tmp_path):
    old = export_for_serving(build_cnn(width=4, seed=7), base_path=tmp_path / "old", version=1,
                             threshold=0.6, temperature=1.3)
    bundled, difference = reexport(old, tmp_path / "new", 2, IMAGES,
                                   scope=tiny_scope_screen(seed=3))
    assert difference <= 1e-5
    before, after = _call(old, GRADCAM_SIGNATURE), _call(bundled, GRADCAM_SIGNATURE)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=1e-5)
    assert after[SCOPE_SCORES].shape == (3, len(SCOPE_CHECKS))
    # Written again without naming a screen, the version keeps its own.
    again, difference = reexport(bundled, tmp_path / "again", 3, IMAGES)
    assert difference <= 1e-5
    np.testing.assert_allclose(_call(again, SERVING_SIGNATURE)[SCOPE_SCORES],
                               after[SCOPE_SCORES], atol=1e-5)


def test_bundling_a_different_network_is_noticed(tmp_path):
    one = export_for_serving(build_cnn(width=4, seed=1), base_path=tmp_path / "a", version=1,
                             threshold=0.5)
    other = export_for_serving(build_cnn(width=4, seed=2), base_path=tmp_path / "b", version=1,
                               threshold=0.5, scope=tiny_scope_screen())
    assert max_output_difference(one, other, IMAGES) > 1e-3


# --- training on a tiny data root ----------------------------------------------------------------


def _tiny_data_root(root):
    """chest_xray (the sample films), a few 'adult' films with a manifest, out_of_scope folders."""
    shutil.copytree(SAMPLE_DIR, root / "chest_xray")
    films = sorted(SAMPLE_DIR.rglob("*.jpeg"))
    adult = root / "nih_adult"
    (adult / "NORMAL").mkdir(parents=True)
    with open(adult / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient", "age"])
        for index, film in enumerate(films[:10]):
            pixels = np.asarray(Image.open(film).convert("L").resize((320, 400)), float)
            name = f"NORMAL/{index:03d}.png"
            Image.fromarray((255 * (pixels / 255) ** 1.5).astype(np.uint8)).save(adult / name)
            writer.writerow([name, "NORMAL", f"p{index}", 16 if index == 9 else 40 + index])
    rng = np.random.default_rng(0)
    for category in (*OUT_OF_SCOPE_NEGATIVES, LATERAL):
        folder = root / "out_of_scope" / category
        folder.mkdir(parents=True)
        for index in range(3):
            Image.fromarray(rng.integers(0, 256, (90, 120), dtype=np.uint8)).save(
                folder / f"{index}.png")


@pytest.fixture(scope="module")
def tiny_screen(tmp_path_factory):
    from services.trainer.cli.main import main

    root = tmp_path_factory.mktemp("data")
    _tiny_data_root(root)
    out = tmp_path_factory.mktemp("scope")
    assert main(["train-scope", "--data-root", str(root), "--out", str(out), "--steps", "30",
                 "--batch-size", "16", "--synthetic-per-kind", "6"]) == 0
    return out


def test_the_training_command_writes_a_screen_and_its_report(tiny_screen):
    screen = ScopeScreen.load(tiny_screen)
    assert screen.thresholds.shape == (len(SCOPE_CHECKS),)
    report = json.loads((tiny_screen / "report.json").read_text())
    assert report["in_scope_held_back"]["any"]["n"] > 0
    assert report["adult_held_back"]["any"]["n"] > 0
    assert report["nih_under_18"]["any"]["n"] == 1  # the one patient under 18 is never trained
    assert set(report["rotated_held_back"]) == {"90", "180", "270"}


def test_noise_is_further_from_the_training_films_than_a_chest_film(tiny_screen):
    screen = ScopeScreen.load(tiny_screen)
    atypical = SCOPE_CHECKS.index(ATYPICAL_IMAGE)
    films = pool(np.stack([np.asarray(Image.open(p).convert("L").resize((224, 224)))[..., None]
                           for p in sorted(SAMPLE_DIR.rglob("*.jpeg"))[:8]]))
    noise = pool(synthesise("noise", 8, seed=11))
    assert np.median(screen.scores(noise)[:, atypical]) > np.median(
        screen.scores(films)[:, atypical])


def test_the_bundle_command_adds_a_trained_screen_to_a_version(tiny_screen, tmp_path, capsys):
    from services.trainer.cli.main import main

    old = export_for_serving(build_cnn(width=4, seed=4), base_path=tmp_path / "old", version=1,
                             threshold=0.5)
    assert main(["bundle-scope", "--model", str(old), "--scope", str(tiny_screen),
                 "--out-base", str(tmp_path / "new"), "--version", "2"]) == 0
    assert "pneumonia outputs match" in capsys.readouterr().out
    bundled = tmp_path / "new" / "cxr-pneumonia" / "2"
    np.testing.assert_array_equal(_call(bundled, SERVING_SIGNATURE)[SCOPE_THRESHOLDS][0],
                                  ScopeScreen.load(tiny_screen).thresholds)
    assert main(["bundle-scope", "--model", str(tmp_path), "--scope", str(tiny_screen),
                 "--out-base", str(tmp_path / "x"), "--version", "1"]) == 2
