"""The promotion gate: clinical floors and no regression against the champion, on the gate set.

The gate set is a fixed, patient-grouped share of the data that no training run sees
(`data.splits.split_gate_set`; docs/training.md). Both the candidate and the current champion
are scored on it through their exported `serving_default` signature, each at its own threshold,
and the numbers come from `services.trainer.evaluation.metrics.compute_metrics`.

MLflow's `validate_evaluation_results` cannot express a tolerated regression (its
`min_absolute_change` must be positive: the candidate has to *beat* the baseline), so the checks
are written out here, one `GateCheck` each, and the verdict is recorded as version tags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.trainer.artifact.scoring import score_saved_model
from services.trainer.data.dataset import data_fingerprint, load_images
from services.trainer.data.records import XrayRecord
from services.trainer.evaluation.metrics import compute_metrics

log = logging.getLogger(__name__)

GATE_METRICS = ("auroc", "sensitivity", "specificity", "threshold", "n", "n_pneumonia", "n_normal")


@dataclass(frozen=True)
class GateSet:
    """The gate images as model inputs, with their labels; `fingerprint` names the exact set."""

    images: np.ndarray
    is_pneumonia: np.ndarray
    subtypes: list[str | None]
    fingerprint: str

    @classmethod
    def from_records(cls, records: Sequence[XrayRecord], image_size: int = 224,
                     cache_dir: str | Path | None = None) -> GateSet:
        if not records:
            raise ValueError("the gate set is empty")
        return cls(
            images=load_images(records, size=image_size, cache_dir=cache_dir),
            is_pneumonia=np.array([r.label == "PNEUMONIA" for r in records], dtype=int),
            subtypes=[r.subtype for r in records],
            fingerprint=data_fingerprint(records),
        )

    def evaluate(self, saved_model_dir: str | Path) -> dict:
        """The evaluate-format metrics of one exported model, at the model's own threshold."""
        scores = score_saved_model(saved_model_dir, self.images)
        return compute_metrics(self.is_pneumonia, scores.p_pneumonia, scores.threshold,
                               self.subtypes, class_probabilities=scores.class_probabilities)


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    checks: list[GateCheck]
    candidate: dict
    champion: dict | None = None
    champion_version: int | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        failed = [c.detail for c in self.checks if not c.passed]
        if failed:
            return "refused: " + "; ".join(failed)
        against = (f"no worse than champion v{self.champion_version}"
                   if self.champion is not None else "no champion to compare with")
        return f"passed: clinical floors met, {against}"

    def as_tags(self) -> dict[str, str]:
        """Version tags: `gate.passed`, `gate.reason`, the candidate's and champion's numbers."""
        tags = {"gate.passed": str(self.passed).lower(), "gate.reason": self.reason[:4900]}
        for name in GATE_METRICS:
            tags[f"gate.{name}"] = _fmt(self.candidate.get(name))
            if self.champion is not None:
                tags[f"gate.champion.{name}"] = _fmt(self.champion.get(name))
        tags["gate.champion_version"] = str(self.champion_version or "none")
        tags.update(self.extra_tags)
        return tags


def _fmt(value) -> str:
    if value is None:
        return "null"
    return f"{value:.6f}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class PromotionGate:
    """Floors a candidate must meet, and the most it may lose against the champion."""

    min_sensitivity: float = 0.95
    min_specificity: float = 0.80
    min_auroc: float = 0.95
    max_auroc_drop: float = 0.01
    max_sensitivity_drop: float = 0.02

    @classmethod
    def from_settings(cls, settings) -> PromotionGate:
        return cls(settings.gate_min_sensitivity, settings.gate_min_specificity,
                   settings.gate_min_auroc, settings.gate_max_auroc_drop,
                   settings.gate_max_sensitivity_drop)

    def judge(self, candidate: dict, champion: dict | None = None,
              champion_version: int | None = None) -> GateVerdict:
        """The verdict from metrics already computed on the gate set (pure; no models run)."""
        checks = [
            floor_check("auroc", candidate.get("auroc"), self.min_auroc),
            floor_check("sensitivity", candidate.get("sensitivity"), self.min_sensitivity),
            floor_check("specificity", candidate.get("specificity"), self.min_specificity),
        ]
        if champion is not None:
            checks += [
                regression_check("auroc", candidate.get("auroc"), champion.get("auroc"),
                            self.max_auroc_drop),
                regression_check("sensitivity", candidate.get("sensitivity"),
                            champion.get("sensitivity"), self.max_sensitivity_drop),
            ]
        return GateVerdict(all(c.passed for c in checks), checks, candidate, champion,
                           champion_version)

    def evaluate(self, gate_set: GateSet, candidate_dir: str | Path,
                 champion_dir: str | Path | None = None,
                 champion_version: int | None = None) -> GateVerdict:
        """Score the candidate (and the champion) on the gate set, then judge."""
        candidate = gate_set.evaluate(candidate_dir)
        champion = gate_set.evaluate(champion_dir) if champion_dir is not None else None
        verdict = self.judge(candidate, champion, champion_version)
        log.info("gate on %d images: %s", len(gate_set.is_pneumonia), verdict.reason)
        return GateVerdict(verdict.passed, verdict.checks, candidate, champion, champion_version,
                           {"gate.set_fingerprint": gate_set.fingerprint})


def floor_check(metric: str, value: float | None, floor: float) -> GateCheck:
    if value is None:
        return GateCheck(f"{metric}_floor", False,
                         f"{metric} is undefined on the gate set (a class is missing)")
    passed = value >= floor
    return GateCheck(f"{metric}_floor", passed,
                     f"{metric} {value:.4f} {'>=' if passed else '<'} floor {floor:.4f}")


def regression_check(metric: str, value: float | None, champion: float | None,
                max_drop: float) -> GateCheck:
    if value is None or champion is None:
        return GateCheck(f"{metric}_regression", value is not None,
                         f"{metric} cannot be compared with the champion's")
    drop = champion - value
    passed = drop <= max_drop + 1e-12
    return GateCheck(f"{metric}_regression", passed,
                     f"{metric} {value:.4f} vs champion {champion:.4f} "
                     f"(drop {drop:.4f} {'<=' if passed else '>'} allowed {max_drop:.4f})")
