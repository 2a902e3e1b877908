"""Drift monitoring: each site's recent films against the served model's reference distribution.

Every answered film gives a few numbers (`film_statistics`): the model's own p(pneumonia) (before
a site's calibration), the mean and the standard deviation of the model input's pixels (in 0..1),
and, for a model with a scope screen, each screening score. The worker records them per site in
Redis (`DriftRecorder`: a sorted set per site scored by time, capped in count and age; each member
is a packed record, `FILM_DTYPE`: a digest of the job id, the model version and the statistics as
float32; nothing else about the film is kept).

The reference (`DriftReference`, `assets.extra/drift_reference.json` beside the SavedModel) holds
the same numbers on the model's validation (gate) films: each statistic's sorted values, and the
edges and shares of its PSI bins (the reference's deciles).

The check (`compare`) takes a site's films of the newest window, those of the model version that
answered last, and computes for every statistic both tests:
- `ks`: the two-sample Kolmogorov-Smirnov statistic D (`scipy.stats.ks_2samp`), the largest
  distance between the two empirical distribution functions (0 to 1);
- `psi`: the population stability index over the reference's bins,
  `sum((a - e) * ln(a / e))`, with `a` the site's share and `e` the reference's share of a bin,
  both floored at `PSI_FLOOR` so an empty bin stays finite.
The site is in alert when the chosen test reaches its threshold on any statistic, given at least
the minimum number of films.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import ks_2samp

from shared.contract import (
    ASSETS_EXTRA,
    DRIFT_REFERENCE_FILE,
    PNEUMONIA_PROBABILITY,
    SCOPE_CHECKS,
    SCOPE_SCORES,
)

DriftTest = Literal["ks", "psi"]
DRIFT_TESTS: tuple[str, ...] = ("ks", "psi")

# The recorded statistics, in the order of a recorded film's values.
PROBABILITY = "pneumonia_probability"
MEAN_INTENSITY = "mean_intensity"
CONTRAST = "contrast"
SCOPE_PREFIX = "scope_"
STATISTICS: tuple[str, ...] = (PROBABILITY, MEAN_INTENSITY, CONTRAST,
                               *(SCOPE_PREFIX + check for check in SCOPE_CHECKS))

REFERENCE_FORMAT = 1
PSI_BINS = 10  # the reference's deciles
PSI_FLOOR = 1e-4  # smallest share of a bin in the PSI sum

# Redis keys (the one home of these names).
SITES_KEY = "cxr:drift:sites"
FILMS_KEY_PREFIX = "cxr:drift:films:"


def films_key(site: str) -> str:
    return FILMS_KEY_PREFIX + site


def reference_key(model_name: str, version: int) -> str:
    """The reference's key under the serving base (`CXR_MODEL_BASE_PATH`)."""
    return f"{model_name}/{version}/{ASSETS_EXTRA}/{DRIFT_REFERENCE_FILE}"


# --- statistics of films --------------------------------------------------------------------


def film_statistics(model_input: np.ndarray, outputs: Mapping[str, Any],
                    row: int = 0) -> dict[str, float]:
    """The recorded numbers of one film: `model_input` is its uint8 `[S, S, 1]` (or `[S, S]`)
    model input, `outputs` the served model's outputs with the film at `row`."""
    pixels = np.asarray(model_input, dtype=np.float64) / 255.0
    stats = {
        PROBABILITY: float(np.asarray(outputs[PNEUMONIA_PROBABILITY]).reshape(-1)[row]),
        MEAN_INTENSITY: float(pixels.mean()),
        CONTRAST: float(pixels.std()),
    }
    scores = outputs.get(SCOPE_SCORES)
    if scores is not None:
        values = np.asarray(scores, dtype=np.float64)[row]
        for check, value in zip(SCOPE_CHECKS, values, strict=True):
            stats[SCOPE_PREFIX + check] = float(value)
    return stats


def batch_statistics(images: np.ndarray, outputs: Mapping[str, Any]) -> list[dict[str, float]]:
    """`film_statistics` of every row of a batch (uint8 `[N, S, S, 1]`)."""
    return [film_statistics(images[row], outputs, row) for row in range(len(images))]


# --- the tests --------------------------------------------------------------------------------


def ks_statistic(reference: Sequence[float] | np.ndarray,
                 current: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs."""
    return float(ks_2samp(np.asarray(reference, dtype=float),
                          np.asarray(current, dtype=float)).statistic)


def psi_edges(reference: Sequence[float] | np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner bin edges: the reference's quantiles at 1/bins, 2/bins ...; tied edges merged."""
    values = np.asarray(reference, dtype=float)
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_shares(values: Sequence[float] | np.ndarray, edges: Sequence[float] | np.ndarray
               ) -> np.ndarray:
    """Share of `values` in each bin: `(-inf, e0)`, `[e0, e1)`, ..., `[e_last, inf)`."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to bin")
    index = np.searchsorted(np.asarray(edges, dtype=float), data, side="right")
    return np.bincount(index, minlength=len(edges) + 1) / data.size


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
        floor: float = PSI_FLOOR) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=float), floor)
    a = np.maximum(np.asarray(actual, dtype=float), floor)
    if e.shape != a.shape:
        raise ValueError(f"share vectors differ in length: {e.shape} and {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


# --- the reference ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatisticReference:
    values: np.ndarray  # sorted
    edges: np.ndarray
    shares: np.ndarray

    @classmethod
    def from_values(cls, values: Iterable[float]) -> StatisticReference:
        # float32, as films are recorded: a value both sides share compares equal.
        data = np.sort(np.asarray(list(values), dtype=np.float32).astype(np.float64))
        if data.size == 0 or not np.all(np.isfinite(data)):
            raise ValueError("a reference statistic needs finite values")
        edges = np.unique(psi_edges(data).astype(np.float32).astype(np.float64))
        return cls(data, edges, bin_shares(data, edges))


@dataclass(frozen=True)
class DriftReference:
    """The model's statistics on its validation films (`assets.extra/drift_reference.json`)."""

    statistics: dict[str, StatisticReference]
    films: int
    source: dict[str, Any] = field(default_factory=dict)  # what the films were, in words/digests

    @classmethod
    def from_films(cls, films: Sequence[Mapping[str, float]],
                   source: Mapping[str, Any] | None = None) -> DriftReference:
        if not films:
            raise ValueError("a drift reference needs at least one film")
        names = [name for name in STATISTICS if all(name in film for film in films)]
        stats = {name: StatisticReference.from_values(film[name] for film in films)
                 for name in names}
        return cls(stats, len(films), dict(source or {}))

    def to_json(self) -> str:
        """Compact JSON: one line per statistic."""
        head = {
            "format": REFERENCE_FORMAT,
            "films": self.films,
            "source": self.source,
            "psi": {"bins": PSI_BINS, "binning": "deciles of the reference values",
                    "floor": PSI_FLOOR},
        }
        lines = [json.dumps(head)[:-1] + ', "statistics": {']
        entries = [
            json.dumps(name) + ': {"edges":' + _floats(ref.edges) + ',"shares":'
            + _floats(ref.shares) + ',"values":' + _floats(ref.values) + "}"
            for name, ref in self.statistics.items()]
        lines.append(",\n".join(entries))
        lines.append("}}")
        return "\n".join(lines)

    @classmethod
    def from_json(cls, text: str | bytes) -> DriftReference:
        body = json.loads(text)
        if body.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"unknown drift reference format {body.get('format')!r}")
        stats = {}
        for name, entry in body["statistics"].items():
            values = np.sort(np.asarray(entry["values"], dtype=np.float32).astype(np.float64))
            edges = np.asarray(entry["edges"], dtype=np.float32).astype(np.float64)
            shares = np.asarray(entry["shares"], dtype=float)
            if len(shares) != len(edges) + 1 or values.size == 0:
                raise ValueError(f"drift reference statistic {name!r} is malformed")
            stats[name] = StatisticReference(values, edges, shares)
        return cls(stats, int(body["films"]), dict(body.get("source") or {}))


def _floats(values: np.ndarray) -> str:
    """A JSON list of the values as float32, each in the fewest digits that read back exactly."""
    return "[" + ",".join(str(v) for v in np.asarray(values, dtype=np.float32)) + "]"


# --- recorded films ---------------------------------------------------------------------------


# One recorded film, as the member of the site's sorted set: a digest of its job id (so a film is
# recorded once), the model version that answered, and its statistics (NaN where not recorded).
FILM_DTYPE = np.dtype([("token", "S8"), ("version", "<i4"), ("values", "<f4", (len(STATISTICS),))])
FILM_BYTES = FILM_DTYPE.itemsize


def film_token(job_id: str) -> bytes:
    return hashlib.sha256(job_id.encode()).digest()[:8]


def encode_film(job_id: str, version: int, stats: Mapping[str, float]) -> bytes:
    film = np.zeros((), dtype=FILM_DTYPE)
    film["token"] = film_token(job_id)
    film["version"] = int(version)
    film["values"] = [stats.get(name, math.nan) for name in STATISTICS]
    return film.tobytes()


@dataclass(frozen=True)
class SiteFilms:
    """A site's recorded films of one model version, newest window: one row per film."""

    site: str
    version: int | None
    values: np.ndarray  # [films, len(STATISTICS)], NaN where a statistic was not recorded

    @property
    def films(self) -> int:
        return len(self.values)

    def column(self, name: str) -> np.ndarray:
        column = self.values[:, STATISTICS.index(name)]
        return column[np.isfinite(column)]


def decode_films(site: str, members: Sequence[bytes]) -> SiteFilms:
    """Members newest first; the films of the newest member's version are kept."""
    known = [member for member in members if len(member) == FILM_BYTES]
    if not known:
        return SiteFilms(site, None, np.empty((0, len(STATISTICS))))
    films = np.frombuffer(b"".join(known), dtype=FILM_DTYPE)
    version = int(films["version"][0])
    kept = films["values"][films["version"] == version]
    return SiteFilms(site, version, kept.astype(np.float64))


class DriftRecorder:
    """Records each answered film's statistics per site; reads a site's window back."""

    def __init__(self, redis_client: Any, *, max_films: int, window_s: float) -> None:
        self.redis = redis_client
        self.max_films = max_films
        self.window_s = window_s

    def record(self, site: str, job_id: str, version: int, stats: Mapping[str, float],
               now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.record_many(site, [(job_id, version, stats, now)])

    def record_many(self, site: str,
                    films: Iterable[tuple[str, int, Mapping[str, float], float]]) -> None:
        """Several films of one site at once: `(job_id, version, stats, unix time)` each."""
        key = films_key(site)
        members = {encode_film(job_id, version, stats): at for job_id, version, stats, at in films}
        if not members:
            return
        newest = max(members.values())
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(SITES_KEY, site)
        pipe.zadd(key, members)
        pipe.zremrangebyscore(key, "-inf", f"({newest - self.window_s}")
        pipe.zremrangebyrank(key, 0, -(self.max_films + 1))
        pipe.expire(key, max(1, math.ceil(self.window_s)))
        pipe.execute()

    def sites(self) -> list[str]:
        return sorted(s.decode() if isinstance(s, bytes) else s
                      for s in self.redis.smembers(SITES_KEY))

    def window(self, site: str, now: float | None = None) -> SiteFilms:
        """The site's films of the last `window_s` seconds, at most `max_films`, newest first."""
        now = time.time() if now is None else now
        members = self.redis.zrevrangebyscore(films_key(site), now, now - self.window_s,
                                              start=0, num=self.max_films)
        return decode_films(site, members)

    def forget(self, site: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(films_key(site))
        pipe.srem(SITES_KEY, site)
        pipe.execute()


# --- the check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteDrift:
    """One site's check: both tests per statistic, and whether the chosen one crossed."""

    site: str
    version: int | None
    films: int
    test: str
    threshold: float
    ks: dict[str, float]
    psi: dict[str, float]
    alert: bool
    enough_films: bool

    def crossed(self) -> dict[str, float]:
        values = self.ks if self.test == "ks" else self.psi
        return {name: value for name, value in values.items() if value >= self.threshold}

    def log_line(self) -> str:
        """One line for the log: no film, no job, only the site and the figures."""
        values = self.ks if self.test == "ks" else self.psi
        figures = " ".join(f"{name}={value:.3f}" for name, value in values.items())
        state = "ALERT" if self.alert else "ok" if self.enough_films else "too_few_films"
        return (f"drift check site={self.site} version={self.version} films={self.films} "
                f"test={self.test} threshold={self.threshold} state={state} {figures}").rstrip()


def compare(films: SiteFilms, reference: DriftReference, *, test: DriftTest, threshold: float,
            min_films: int) -> SiteDrift:
    """Both tests on every statistic the reference and the films share."""
    if test not in DRIFT_TESTS:
        raise ValueError(f"unknown drift test {test!r}; expected one of {DRIFT_TESTS}")
    ks_values: dict[str, float] = {}
    psi_values: dict[str, float] = {}
    enough = films.films >= min_films
    if enough:
        for name, ref in reference.statistics.items():
            current = films.column(name) if name in STATISTICS else np.empty(0)
            if current.size < min_films:
                continue
            ks_values[name] = ks_statistic(ref.values, current)
            psi_values[name] = psi(ref.shares, bin_shares(current, ref.edges))
    chosen = ks_values if test == "ks" else psi_values
    alert = any(value >= threshold for value in chosen.values())
    return SiteDrift(films.site, films.version, films.films, test, threshold, ks_values,
                     psi_values, alert, enough)
