"""The promotion gate's site checks: every site with an acceptance set must accept the version.

For each site in `CXR_SITE_ACCEPTANCE_SETS` the candidate (and the current champion) is scored on
the site's set and its operating point fitted there; the cross-fitted sensitivity and specificity
at that point (`site_calibration`) must meet the site floors and lose no more than the allowed
drop against the champion's on the same set. The fitted points travel with the version: they are
recorded as version tags and published with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from services.trainer.artifact.scoring import run_site_acceptance
from services.trainer.data.site_records import read_site_records
from services.trainer.evaluation.site_calibration import SiteAcceptance
from services.trainer.registry.gates import GateCheck, floor_check, regression_check

log = logging.getLogger(__name__)

SITE_GATE_METRICS = ("sensitivity", "specificity")


@dataclass(frozen=True)
class SiteGate:
    min_sensitivity: float = 0.95
    min_specificity: float = 0.85
    max_sensitivity_drop: float = 0.02
    max_specificity_drop: float = 0.03

    @classmethod
    def from_settings(cls, settings) -> SiteGate:
        return cls(settings.site_min_sensitivity, settings.site_min_specificity,
                   settings.site_max_sensitivity_drop, settings.site_max_specificity_drop)

    def judge(self, site: str, candidate: dict, champion: dict | None = None) -> list[GateCheck]:
        """Checks on one site's reports (`site_calibration` report dicts); pure."""
        figures = candidate["site_threshold"]
        checks = [floor_check("sensitivity", figures["sensitivity"], self.min_sensitivity),
                  floor_check("specificity", figures["specificity"], self.min_specificity)]
        if champion is not None:
            before = champion["site_threshold"]
            checks += [
                regression_check("sensitivity", figures["sensitivity"], before["sensitivity"],
                            self.max_sensitivity_drop),
                regression_check("specificity", figures["specificity"], before["specificity"],
                            self.max_specificity_drop)]
        return [GateCheck(f"site.{site}.{c.name}", c.passed, f"site {site}: {c.detail}")
                for c in checks]


@dataclass(frozen=True)
class SiteVerdicts:
    checks: list[GateCheck]
    candidates: dict[str, SiteAcceptance]
    champions: dict[str, SiteAcceptance]

    def tags(self) -> dict[str, str]:
        """`gate.site.<site>.<metric>` (and `.champion.`) version tags."""
        tags = {}
        for site, result in self.candidates.items():
            for name in SITE_GATE_METRICS:
                tags[f"gate.site.{site}.{name}"] = _fmt(result.report["site_threshold"][name])
                if site in self.champions:
                    tags[f"gate.site.{site}.champion.{name}"] = _fmt(
                        self.champions[site].report["site_threshold"][name])
            tags[f"gate.site.{site}.fingerprint"] = result.report["data_fingerprint"]
        return tags


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.6f}"


def evaluate_sites(settings, candidate_dir: str | Path, champion_dir: str | Path | None = None,
                   candidate_version: int | None = None,
                   champion_version: int | None = None) -> SiteVerdicts:
    """Score the candidate (and champion) at every site with an acceptance set, then judge."""
    gate = SiteGate.from_settings(settings)
    checks: list[GateCheck] = []
    candidates: dict[str, SiteAcceptance] = {}
    champions: dict[str, SiteAcceptance] = {}
    for site, data in settings.site_sets.items():
        records = read_site_records(Path(data))
        candidates[site] = run_site_acceptance(
            site, Path(candidate_dir), records, target_sensitivity=settings.target_sensitivity,
            confidence=settings.site_threshold_confidence,
            model_name=settings.model_name, model_version=candidate_version)
        if champion_dir is not None:
            champions[site] = run_site_acceptance(
                site, Path(champion_dir), records, target_sensitivity=settings.target_sensitivity,
                confidence=settings.site_threshold_confidence,
                model_name=settings.model_name, model_version=champion_version)
        checks += gate.judge(site, candidates[site].report,
                             champions[site].report if site in champions else None)
    for check in checks:
        log.info("site gate: %s", check.detail)
    return SiteVerdicts(checks, candidates, champions)
