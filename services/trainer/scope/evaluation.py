"""Figures of a scope screen on images it never trained or chose a threshold on.

Rates are shares of images flagged (any check at or above its threshold, or one named check),
each with a Wilson 95 % interval. In-scope films: held-back `chest_xray` patients and
`site_acceptance` (never trained on). Adults: held-back `nih_adult` patients. Rotation and
inversion: the held-back films turned or negated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.scope.data import ScopeData, pool
from services.trainer.scope.model import ScopeScreen, flagged
from shared.contract import ADULT, INVERTED, ROTATED, SCOPE_CHECKS


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def rate(mask: np.ndarray) -> dict:
    hits, n = int(np.sum(mask)), int(mask.size)
    return {"n": n, "flagged": hits, "rate": hits / n if n else None, "ci95": wilson(hits, n)}


def describe(scores: np.ndarray, thresholds: np.ndarray) -> dict:
    """Share flagged by any check and by each check."""
    over = scores >= thresholds
    return {"any": rate(np.any(over, axis=1)),
            "by_check": {check: rate(over[:, i]) for i, check in enumerate(SCOPE_CHECKS)}}


def site_acceptance_pooled(folder: Path) -> np.ndarray:
    return pool(load_images(scan_dataset(folder, find_duplicates=False), size=224))


def evaluate_screen(screen: ScopeScreen, data: ScopeData,
                    site_acceptance: np.ndarray | None = None) -> dict:
    t = screen.thresholds
    col = {check: i for i, check in enumerate(SCOPE_CHECKS)}
    films = data.test_films
    result: dict = {"thresholds": dict(zip(SCOPE_CHECKS, map(float, t), strict=True)),
                    "in_scope_held_back": describe(screen.scores(films), t)}
    if site_acceptance is not None:
        result["site_acceptance"] = describe(screen.scores(site_acceptance), t)
    adults = screen.scores(data.adult_test)
    result["adult_held_back"] = {**describe(adults, t),
                                 "adult_check": rate(adults[:, col[ADULT]] >= t[col[ADULT]])}
    minors = screen.scores(data.nih_minors)
    result["nih_under_18"] = describe(minors, t)
    rotated = {}
    for quarter in (1, 2, 3):
        scores = screen.scores(np.rot90(films, quarter, axes=(1, 2)).copy())
        rotated[f"{90 * quarter}"] = {
            "rotated_check": rate(scores[:, col[ROTATED]] >= t[col[ROTATED]]),
            "any": rate(flagged(scores, t))}
    result["rotated_held_back"] = rotated
    scores = screen.scores(255.0 - films)
    result["inverted_held_back"] = {"inverted_check": rate(scores[:, col[INVERTED]]
                                                           >= t[col[INVERTED]]),
                                    "any": rate(flagged(scores, t))}
    flat = np.stack([np.full((56, 56, 1), value, np.float32) for value in (0, 128, 255)])
    result["flat_fields"] = describe(screen.scores(flat), t)  # black, grey, white
    return result
