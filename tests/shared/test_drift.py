"""shared/drift.py: the two tests against hand-computed cases, the reference file, the per-site
record in a real Redis (window, cap, versions) and the alert decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import redis

from shared.contract import PNEUMONIA_PROBABILITY, SCOPE_CHECKS, SCOPE_SCORES
from shared.drift import (
    CONTRAST,
    FILM_BYTES,
    MEAN_INTENSITY,
    PROBABILITY,
    PSI_FLOOR,
    SITES_KEY,
    STATISTICS,
    DriftRecorder,
    DriftReference,
    SiteFilms,
    bin_shares,
    compare,
    decode_films,
    encode_film,
    film_statistics,
    films_key,
    ks_statistic,
    psi,
    psi_edges,
)


def test_psi_of_two_bins_by_hand():
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_floors_an_empty_bin_so_it_stays_finite():
    value = psi([0.5, 0.5], [1.0, 0.0])
    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (PSI_FLOOR - 0.5) * math.log(PSI_FLOOR / 0.5)
    assert value == pytest.approx(expected)
    assert math.isfinite(value)
    with pytest.raises(ValueError, match="differ in length"):
        psi([0.5, 0.5], [1.0])


def test_ks_statistic_by_hand():
    # CDFs of {1,2,3,4} and {3,4,5,6}: the largest gap is at 2 (0.5 against 0).
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([0, 1], [5, 6, 7]) == pytest.approx(1.0)


def test_bins_are_the_reference_deciles_and_ties_merge():
    values = np.arange(100, dtype=float)
    edges = psi_edges(values)
    assert len(edges) == 9
    assert bin_shares(values, edges).tolist() == pytest.approx([0.1] * 10)
    # Everything below the first edge, beside everything above the last.
    assert bin_shares([-5.0, 1000.0], edges).tolist() == [0.5] + [0.0] * 8 + [0.5]
    tied = psi_edges([0.0] * 50 + list(range(1, 51)))
    assert len(tied) == len(set(tied.tolist())) < 9


def test_film_statistics_reads_the_model_input_and_outputs():
    image = np.zeros((4, 4, 1), dtype=np.uint8)
    image[:2] = 255  # half white: mean 0.5, standard deviation 0.5
    outputs = {PNEUMONIA_PROBABILITY: np.array([0.1, 0.8], dtype=np.float32),
               SCOPE_SCORES: np.arange(2 * len(SCOPE_CHECKS), dtype=np.float32).reshape(2, -1)}
    stats = film_statistics(image, outputs, row=1)
    assert stats[PROBABILITY] == pytest.approx(0.8)
    assert stats[MEAN_INTENSITY] == pytest.approx(0.5)
    assert stats[CONTRAST] == pytest.approx(0.5)
    assert [stats["scope_" + check] for check in SCOPE_CHECKS] == list(
        range(len(SCOPE_CHECKS), 2 * len(SCOPE_CHECKS)))
    no_screen = film_statistics(image, {PNEUMONIA_PROBABILITY: np.array([0.3])})
    assert set(no_screen) == {PROBABILITY, MEAN_INTENSITY, CONTRAST}


def _films(rng, n, shift=0.0):
    return [{PROBABILITY: float(p), MEAN_INTENSITY: float(m), CONTRAST: 0.2}
            for p, m in zip(rng.uniform(0, 1, n), rng.normal(0.5 + shift, 0.05, n), strict=True)]


def test_the_reference_file_round_trips():
    rng = np.random.default_rng(0)
    reference = DriftReference.from_films(_films(rng, 300), {"films": "fixture"})
    again = DriftReference.from_json(reference.to_json())
    assert again.films == 300 and again.source == {"films": "fixture"}
    assert set(again.statistics) == {PROBABILITY, MEAN_INTENSITY, CONTRAST}
    for name, stat in reference.statistics.items():  # float32 values, read back exactly
        assert np.array_equal(again.statistics[name].values, stat.values)
        assert np.array_equal(again.statistics[name].edges, stat.edges)
        assert np.allclose(again.statistics[name].shares, stat.shares, rtol=1e-6)
    with pytest.raises(ValueError, match="format"):
        DriftReference.from_json('{"format": 99, "films": 1, "statistics": {}}')
    with pytest.raises(ValueError):
        DriftReference.from_films([])


def _site_films(films, site="s", version=3):
    members = [encode_film(f"job-{i}", version, film) for i, film in enumerate(films)]
    return decode_films(site, members)


def test_compare_alerts_on_a_shift_and_not_on_the_same_distribution():
    rng = np.random.default_rng(1)
    reference = DriftReference.from_films(_films(rng, 500))
    same = compare(_site_films(_films(rng, 400)), reference, test="ks", threshold=0.25,
                   min_films=100)
    assert not same.alert and same.enough_films and same.crossed() == {}
    assert max(same.ks.values()) < 0.15
    shifted = compare(_site_films(_films(rng, 400, shift=0.1)), reference, test="ks",
                      threshold=0.25, min_films=100)
    assert shifted.alert and set(shifted.crossed()) == {MEAN_INTENSITY}
    # Two standard deviations apart: D = 2 * Phi(1) - 1 = 0.683 in the limit.
    assert shifted.ks[MEAN_INTENSITY] == pytest.approx(0.683, abs=0.07)
    assert shifted.psi[MEAN_INTENSITY] > 1.0
    by_psi = compare(_site_films(_films(rng, 400, shift=0.1)), reference, test="psi",
                     threshold=0.25, min_films=100)
    assert by_psi.alert and "state=ALERT" in by_psi.log_line()
    assert "job" not in by_psi.log_line()


def test_too_few_films_are_not_judged():
    rng = np.random.default_rng(2)
    reference = DriftReference.from_films(_films(rng, 200))
    few = compare(_site_films(_films(rng, 50, shift=1.0)), reference, test="ks", threshold=0.25,
                  min_films=100)
    assert not few.alert and not few.enough_films and few.ks == {}
    assert "state=too_few_films" in few.log_line()
    with pytest.raises(ValueError, match="unknown drift test"):
        compare(_site_films(_films(rng, 50)), reference, test="chi2", threshold=1, min_films=1)


@pytest.fixture
def client(redis_url):
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def test_the_recorder_keeps_a_capped_window_per_site(client):
    recorder = DriftRecorder(client, max_films=5, window_s=100)
    film = {PROBABILITY: 0.5, MEAN_INTENSITY: 0.4, CONTRAST: 0.2}
    for i in range(8):
        recorder.record("north", f"job-{i}", 3, {**film, PROBABILITY: i / 10}, now=1000 + i)
    recorder.record("north", "job-7", 3, {**film, PROBABILITY: 0.7}, now=1007)  # same film again
    assert client.zcard(films_key("north")) == 5  # capped to the newest
    window = recorder.window("north", now=1010)
    assert window.version == 3 and window.films == 5
    assert window.column(PROBABILITY).tolist() == pytest.approx([0.7, 0.6, 0.5, 0.4, 0.3])
    assert np.isnan(window.values[:, STATISTICS.index("scope_adult")]).all()
    assert window.column("scope_adult").size == 0
    # Past the window, the films are no longer read, and the next record drops them.
    assert recorder.window("north", now=1200).films == 0
    recorder.record("north", "job-new", 3, film, now=1300)
    assert client.zcard(films_key("north")) == 1
    assert recorder.sites() == ["north"]
    assert 0 < client.ttl(films_key("north")) <= 100


def test_the_record_holds_no_job_id_and_the_newest_version_is_read(client):
    recorder = DriftRecorder(client, max_films=100, window_s=1000)
    film = {PROBABILITY: 0.5, MEAN_INTENSITY: 0.4, CONTRAST: 0.2}
    recorder.record("east", "job-secret-1", 3, film, now=10)
    recorder.record("east", "job-secret-2", 4, film, now=20)
    recorder.record("east", "job-secret-3", 4, film, now=30)
    members = client.zrange(films_key("east"), 0, -1)
    assert all(b"job-secret" not in member and len(member) == FILM_BYTES for member in members)
    window = recorder.window("east", now=40)
    assert (window.version, window.films) == (4, 2)
    recorder.forget("east")
    assert not client.exists(films_key("east")) and not client.sismember(SITES_KEY, "east")


def test_an_empty_window_has_no_version():
    empty = decode_films("x", [])
    assert isinstance(empty, SiteFilms) and empty.version is None and empty.films == 0
    assert decode_films("x", [b"garbage"]).version is None
