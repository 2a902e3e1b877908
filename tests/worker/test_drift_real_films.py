"""The drift check on real films: the bundled model (version 5) answers every film of a shifted
stream (adult films, `nih_adult`) and of the site's own later period (`site_acceptance`); their
statistics are recorded per site as the worker records them, and the check, against the reference
committed beside version 5, fires for the adults only, with its gauges in the metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import REGISTRY, generate_latest

from services.trainer.artifact.drift_reference import model_outputs
from services.trainer.data.dataset import load_images, scan_dataset
from services.worker.drift import run_drift_check
from services.worker.settings import WorkerSettings
from shared.drift import (
    PROBABILITY,
    DriftRecorder,
    DriftReference,
    batch_statistics,
    reference_key,
)
from shared.storage import LocalStorage
from tests.worker.jobs import metric_value

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
VERSION_DIR = MODELS / "cxr-pneumonia" / "5"
VERSION = int(VERSION_DIR.name)
DATA = REPO.parent / "shared" / "data"
SETS = {"adult-hospital": DATA / "nih_adult", "home-site": DATA / "site_acceptance"}


@pytest.fixture(scope="module")
def film_statistics():
    """Each set's films through the worker's preprocessing and version 5, as recorded stats."""
    missing = [str(folder) for folder in SETS.values() if not folder.is_dir()]
    if missing or not VERSION_DIR.is_dir():
        raise FileNotFoundError(f"the real films or the bundled model are missing: {missing}")
    found = {}
    for site, folder in SETS.items():
        images = load_images(scan_dataset(folder))
        found[site] = batch_statistics(images, model_outputs(VERSION_DIR, images))
    return found


def test_the_committed_reference_is_the_bundled_versions_gate_set():
    storage = LocalStorage(MODELS)
    reference = DriftReference.from_json(storage.get(reference_key("cxr-pneumonia", VERSION)))
    assert reference.films == 524  # the gate set: 10 % of the patients, never trained on
    assert "gate set" in reference.source["films"]
    assert PROBABILITY in reference.statistics and "scope_adult" in reference.statistics


def test_the_check_fires_on_adult_films_and_stays_quiet_on_the_sites_own(
        film_statistics, redis_url, caplog):
    client = redis.Redis.from_url(redis_url)
    settings = WorkerSettings(model_base_path=str(MODELS), drift_test="ks",
                              drift_ks_threshold=0.25, drift_min_films=200)
    recorder = DriftRecorder(client, max_films=settings.drift_max_films,
                             window_s=settings.drift_window_days * 86400)
    now = 1_900_000_000.0
    for site, films in film_statistics.items():
        recorder.record_many(site, [(f"{site}-{i}", VERSION, stats, now - i)
                                    for i, stats in enumerate(films)])
    with caplog.at_level(logging.INFO, logger="services.worker.drift"):
        results = {r.site: r for r in run_drift_check(settings, recorder, LocalStorage(MODELS),
                                                      now=now + 60)}

    adults, home = results["adult-hospital"], results["home-site"]
    assert (adults.films, home.films) == (500, 313)
    assert adults.alert and not home.alert
    # The screen's adult score separates the adults almost completely.
    assert adults.ks["scope_adult"] > 0.9
    assert max(home.ks.values()) < 0.2
    assert adults.psi["scope_adult"] > 2.0

    lines = [r.getMessage() for r in caplog.records if "drift check" in r.getMessage()]
    alert_line = next(line for line in lines if "site=adult-hospital" in line)
    assert "state=ALERT" in alert_line and "crossed=" in alert_line and "scope_adult" in alert_line
    assert any("site=home-site" in line and "state=ok" in line for line in lines)
    assert not any("adult-hospital-" in line for line in lines)  # no job named

    text = generate_latest(REGISTRY).decode()
    assert metric_value(text, "cxr_drift_alert", site="adult-hospital") == 1
    assert metric_value(text, "cxr_drift_alert", site="home-site") == 0
    assert metric_value(text, "cxr_drift_films", site="adult-hospital") == 500
    assert metric_value(text, "cxr_drift_ks", site="adult-hospital",
                        statistic="scope_adult") == pytest.approx(adults.ks["scope_adult"])
    assert metric_value(text, "cxr_drift_psi", site="home-site",
                        statistic=PROBABILITY) == pytest.approx(home.psi[PROBABILITY])
    client.close()


def test_psi_reads_the_sites_own_period_as_a_shift_of_the_model_output(film_statistics):
    """Why KS is the default test: the later period moves the model's p(pneumonia) (its
    specificity falls there, docs/model.md); the PSI over deciles rates that above the usual
    0.25, KS's largest CDF gap stays small."""
    reference = DriftReference.from_json(
        LocalStorage(MODELS).get(reference_key("cxr-pneumonia", VERSION)))
    from shared.drift import bin_shares, ks_statistic, psi

    p = np.array([film[PROBABILITY] for film in film_statistics["home-site"]])
    ref = reference.statistics[PROBABILITY]
    assert psi(ref.shares, bin_shares(p, ref.edges)) > 0.2
    assert ks_statistic(ref.values, p) < 0.2
