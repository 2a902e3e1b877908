"""Local acceptance of a model version at a site, and the site's operating point.

A site hands over a labelled acceptance set. The model version scores it through its exported
`serving_default` signature; on those scores this module fits the site's operating point (Platt
calibration of the model's logit, then the sensitivity-first threshold of `thresholds.py` on the
calibrated scale) and measures it. With a `confidence` the threshold meets the target sensitivity
with that probability over the draw of the acceptance set, not just on average: a site signs off
on the threshold it is handed, fitted on a few hundred films.

Every figure that depends on the fit is cross-fitted: the site's patients (files with identical
pixels kept together) are split into two halves, the point is fitted on one half and measured on
the other, both ways, and the two measured halves are pooled. No image is ever measured by a point
fitted on it. The figures at the model's own threshold and the AUROC need no fit and use every
image.

A Platt fit is refused (identity calibration, threshold still fitted) when a parameter ends on
its bound (separable scores: the slope runs off to infinity) or when the cross-fitted ECE with the
calibration is worse than without it.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.stats import binomtest
from sklearn.model_selection import StratifiedGroupKFold

from services.trainer.data.dataset import DatasetError
from services.trainer.data.records import XrayRecord
from services.trainer.evaluation.calibration import ECE_BINS, expected_calibration_error
from services.trainer.evaluation.figures import save_site_figures
from services.trainer.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_auroc_ci,
    compute_metrics,
)
from services.trainer.evaluation.thresholds import choose_threshold, pneumonia_films_needed
from shared.contract import MODEL_NAME
from shared.operating_point import (
    LOGIT_EPS,
    Calibration,
    OperatingPoint,
    check_site_name,
)

log = logging.getLogger(__name__)

SLOPE_BOUNDS = (0.02, 50.0)
INTERCEPT_BOUNDS = (-20.0, 20.0)
CROSS_FIT_SEED = 0
# How many patient splits the report repeats the cross-fit over, to show how much one split decides.
SPREAD_SPLITS = 100


# --- fitting ------------------------------------------------------------------------------------


def _logits(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p / (1.0 - p))


def apply_calibration(calibration: Calibration, p) -> np.ndarray:
    """`Calibration.apply` over an array."""
    p = np.asarray(p, dtype=np.float64)
    if calibration.method == "identity":
        return np.clip(p, 0.0, 1.0)
    z = calibration.slope * _logits(p) + calibration.intercept
    return 1.0 / (1.0 + np.exp(-z))


def fit_platt(p, y) -> Calibration:
    """Platt scaling of the logit by maximum likelihood; refused (identity) at a bound."""
    z, y = _logits(p), np.asarray(y, dtype=np.float64)
    if len(np.unique(y)) != 2:
        raise ValueError("calibrating needs both normal and pneumonia examples")
    if z[y == 0].max() < z[y == 1].min():
        # No finite maximum: the likelihood grows as the slope grows, up to any bound set.
        return Calibration(refused="the scores separate the classes, so the Platt slope runs "
                           "to its bound")

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        s = a * z + b
        # log(1 + e^s) - y s, and its gradient
        nll = np.logaddexp(0.0, s) - y * s
        residual = 1.0 / (1.0 + np.exp(-s)) - y
        return float(nll.mean()), np.array([(residual * z).mean(), residual.mean()])

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                      bounds=[SLOPE_BOUNDS, INTERCEPT_BOUNDS],
                      options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 2000})
    slope, intercept = (float(v) for v in result.x)
    for name, value, (low, high) in (("slope", slope, SLOPE_BOUNDS),
                                     ("intercept", intercept, INTERCEPT_BOUNDS)):
        if min(value - low, high - value) <= 1e-6 * max(1.0, abs(value)):
            return Calibration(refused=f"the Platt {name} ended on its bound ({value:.4g})")
    return Calibration(method="platt", slope=slope, intercept=intercept)


@dataclass(frozen=True)
class FittedPoint:
    calibration: Calibration
    threshold: float


def fit_point(p, y, target_sensitivity: float, calibrate: bool = True,
              confidence: float | None = None) -> FittedPoint:
    """Calibration (unless `calibrate` is false) and the threshold on the calibrated scale."""
    calibration = fit_platt(p, y) if calibrate else Calibration()
    threshold = choose_threshold(y, apply_calibration(calibration, p), target_sensitivity,
                                 confidence=confidence)
    return FittedPoint(calibration, threshold)


# --- cross-fitting ------------------------------------------------------------------------------


def patient_groups(records: Sequence[XrayRecord]) -> list[str]:
    """One group per patient, patients whose files share identical pixels merged into one."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for record in records:
        find(record.patient)
        if record.dup_group is not None:
            parent[find("dup:" + record.dup_group)] = find(record.patient)
    return [find(r.patient) for r in records]


def split_halves(y, groups: Sequence[str], seed: int = CROSS_FIT_SEED) -> np.ndarray:
    """0/1 per image: two halves with no group in both, balanced by label where groups allow."""
    y = np.asarray(y, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
    halves = np.zeros(len(y), dtype=int)
    for half, (_, measured) in enumerate(splitter.split(np.zeros(len(y)), y, list(groups))):
        halves[measured] = half
    return halves


@dataclass
class CrossFit:
    """Pooled held-out answers: each image scored by the point fitted on the other half."""

    halves: np.ndarray
    p_site: np.ndarray  # calibrated by the other half's calibration
    threshold: np.ndarray  # the other half's threshold, per image
    fits: list[FittedPoint]
    fitted_on: list[np.ndarray] = field(default_factory=list)  # image indices, per half

    @property
    def decisions(self) -> np.ndarray:
        return (self.p_site >= self.threshold).astype(int)


def cross_fit(p, y, halves: np.ndarray, target_sensitivity: float,
              calibrate: bool = True, confidence: float | None = None) -> CrossFit:
    """Fit on one half, measure on the other, both ways."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=int)
    p_site, threshold = np.empty_like(p), np.empty_like(p)
    fits, fitted_on = [], []
    for half in (0, 1):
        fit_idx, measure_idx = np.flatnonzero(halves != half), np.flatnonzero(halves == half)
        fitted = fit_point(p[fit_idx], y[fit_idx], target_sensitivity, calibrate, confidence)
        p_site[measure_idx] = apply_calibration(fitted.calibration, p[measure_idx])
        threshold[measure_idx] = fitted.threshold
        fits.append(fitted)
        fitted_on.append(fit_idx)
    return CrossFit(halves, p_site, threshold, fits, fitted_on)


def split_figures(p, y, groups: Sequence[str], target_sensitivity: float,
                  confidence: float | None = None, splits: int = 100,
                  calibrate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Held-out (sensitivity, specificity) of the cross-fit over patient splits, seeds 0, 1, ...;
    a split whose halves do not each hold both labels is left out."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=int)
    sensitivity, specificity = [], []
    for seed in range(splits):
        halves = split_halves(y, groups, seed)
        if any(len(np.unique(y[halves == h])) != 2 for h in (0, 1)):
            continue
        decisions = cross_fit(p, y, halves, target_sensitivity, calibrate, confidence).decisions
        sensitivity.append(float(decisions[y == 1].mean()))
        specificity.append(float(1 - decisions[y == 0].mean()))
    return np.array(sensitivity), np.array(specificity)


def spread(values: np.ndarray) -> dict | None:
    """Median and 5th-95th percentiles."""
    if len(values) == 0:
        return None
    return {"median": float(np.median(values)), "p5": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95))}


# --- figures ------------------------------------------------------------------------------------


def _ci(successes: int, trials: int) -> list[float] | None:
    if trials == 0:
        return None
    interval = binomtest(successes, trials).proportion_ci(method="wilson")
    return [float(interval.low), float(interval.high)]


def decision_figures(y, decisions) -> dict:
    """Sensitivity, specificity, PPV, NPV (each with a Wilson 95% CI) and the confusion."""
    y, d = np.asarray(y, dtype=int), np.asarray(decisions, dtype=int)
    tp, fn = int(((d == 1) & (y == 1)).sum()), int(((d == 0) & (y == 1)).sum())
    tn, fp = int(((d == 0) & (y == 0)).sum()), int(((d == 1) & (y == 0)).sum())
    out: dict = {"confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}}
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp),
                       ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
        out[name] = k / n if n else None
        out[f"{name}_ci"] = _ci(k, n)
    return out


def reliability_curve(y, p, n_bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin: images, mean predicted p, observed pneumonia rate."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    return [{"bin": [b / n_bins, (b + 1) / n_bins], "n": int((bins == b).sum()),
             "mean_predicted": float(p[bins == b].mean()),
             "observed": float(y[bins == b].mean())} for b in np.unique(bins)]


# --- the acceptance run -------------------------------------------------------------------------


@dataclass
class SiteAcceptance:
    """The site report (`report`, JSON-ready) and the operating point fitted on every image."""

    report: dict
    point: OperatingPoint
    y: np.ndarray
    p_model: np.ndarray
    cross: CrossFit


def site_acceptance(site: str, y, p_model, model_threshold: float, groups: Sequence[str], *,
                    fingerprint: str, target_sensitivity: float = 0.95,
                    confidence: float | None = None, model_name: str = MODEL_NAME,
                    model_version: int | None = None, seed: int = CROSS_FIT_SEED,
                    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
                    spread_splits: int = SPREAD_SPLITS) -> SiteAcceptance:
    """Fit the site's operating point on scored, labelled images and measure it cross-fitted."""
    check_site_name(site)
    y, p = np.asarray(y, dtype=int), np.asarray(p_model, dtype=np.float64)
    if len(np.unique(y)) != 2:
        raise DatasetError(f"site {site}: the acceptance set needs normal and pneumonia images")
    halves = split_halves(y, groups, seed)
    if len(np.unique(halves)) != 2 or any(len(np.unique(y[halves == h])) != 2 for h in (0, 1)):
        raise DatasetError(f"site {site}: too few patients to split into two halves that each "
                           "hold normal and pneumonia images")
    calibrated = cross_fit(p, y, halves, target_sensitivity, True, confidence)
    ece_before = expected_calibration_error(y, p)
    ece_after = expected_calibration_error(y, calibrated.p_site)
    final = fit_point(p, y, target_sensitivity, True, confidence)
    refused = final.calibration.refused
    if refused is None and ece_after > ece_before:
        refused = (f"the calibration made the held-out ECE worse ({ece_before:.4f} -> "
                   f"{ece_after:.4f})")
    if refused is not None:
        log.warning("site %s: calibration refused, identity used: %s", site, refused)
        final = fit_point(p, y, target_sensitivity, False, confidence)
        final = FittedPoint(Calibration(refused=refused), final.threshold)
        shipped = cross_fit(p, y, halves, target_sensitivity, False, confidence)
    else:
        shipped = calibrated
    model_metrics = compute_metrics(y, p, model_threshold, bootstrap_resamples=bootstrap_resamples)
    sens, spec = split_figures(p, y, groups, target_sensitivity, confidence, spread_splits,
                               calibrate=refused is None)
    point = OperatingPoint(
        site=site, model_name=model_name, model_version=model_version,
        calibration=final.calibration, threshold=final.threshold,
        target_sensitivity=target_sensitivity, sensitivity_confidence=confidence,
        model_threshold=model_threshold,
        fitted_at=datetime.now(UTC), data_fingerprint=fingerprint, n=len(y),
        n_pneumonia=int(y.sum()), n_normal=int(len(y) - y.sum()))
    report = {
        "site": site, "model_name": model_name, "model_version": model_version,
        "data_fingerprint": fingerprint, "n": len(y), "n_pneumonia": int(y.sum()),
        "n_normal": int(len(y) - y.sum()), "n_groups": len(set(groups)),
        "target_sensitivity": target_sensitivity,
        "sensitivity_confidence": confidence,
        "threshold_note": _threshold_note(y, halves, target_sensitivity, confidence),
        "auroc": model_metrics["auroc"], "auroc_ci": model_metrics["auroc_ci"],
        "cross_fitted_auroc": compute_metrics(y, shipped.p_site, 0.5,
                                              bootstrap_resamples=1)["auroc"],
        "cross_fitted_auroc_ci": bootstrap_auroc_ci(y, shipped.p_site,
                                                    resamples=bootstrap_resamples),
        "site_threshold": {**decision_figures(y, shipped.decisions),
                           "thresholds_per_half": [f.threshold for f in shipped.fits],
                           "calibrations_per_half": [f.calibration.model_dump()
                                                     for f in shipped.fits]},
        "model_threshold": {**decision_figures(y, (p >= model_threshold).astype(int)),
                            "threshold": model_threshold},
        "ece_before": ece_before,
        "ece_after": expected_calibration_error(y, shipped.p_site),
        "ece_after_platt": ece_after,
        "ece_bins": ECE_BINS,
        "reliability_before": reliability_curve(y, p),
        "reliability_after": reliability_curve(y, shipped.p_site),
        "calibration_refused": refused,
        "cross_fit": {"seed": seed, "images_per_half": [int((halves == h).sum()) for h in (0, 1)]},
        "split_spread": {"splits": len(sens), "sensitivity": spread(sens),
                         "specificity": spread(spec),
                         "share_sensitivity_below_target": float(
                             (sens < target_sensitivity - 1e-12).mean()) if len(sens) else None},
        "operating_point": json.loads(point.model_dump_json()),
    }
    return SiteAcceptance(report, point, y, p, shipped)


def _threshold_note(y, halves, target_sensitivity: float, confidence: float | None) -> str | None:
    """What the confidence asked for could not be held on, when a set or a half was too small."""
    if confidence is None or target_sensitivity >= 1.0:
        return None
    needed = pneumonia_films_needed(target_sensitivity, confidence)
    fitted = [int(y[halves != h].sum()) for h in (0, 1)]
    if min(fitted) >= needed:
        return None
    everything = int(y.sum())
    whole = (f"the point fitted on all {everything} reaches it" if everything >= needed
             else f"nor does the point fitted on all {everything}")
    return (f"{confidence:.0%} confidence in a sensitivity of {target_sensitivity:.0%} needs "
            f"{needed} pneumonia films; the halves had {fitted[0]} and {fitted[1]}, so the "
            "cross-fitted thresholds catch every pneumonia film they were fitted on without "
            f"reaching that confidence; {whole}")


# --- the report ---------------------------------------------------------------------------------


def write_report(result: SiteAcceptance, out_dir: Path) -> dict[str, Path]:
    """`operating_point.json`, `report.json`, figures and the self-contained `report.html`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"operating_point": out_dir / "operating_point.json",
             "report_json": out_dir / "report.json", "report_html": out_dir / "report.html"}
    files["operating_point"].write_bytes(result.point.to_json())
    files["report_json"].write_text(json.dumps(result.report, indent=2))
    figures = save_site_figures(out_dir / "figures", result.y, result.p_model,
                                result.cross.p_site, result.cross.decisions,
                                result.report["model_threshold"]["threshold"])
    files["report_html"].write_text(render_html(result.report, figures))
    return {**files, **figures}


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _with_ci(figures: dict, name: str) -> str:
    ci = figures.get(f"{name}_ci")
    interval = f" ({_pct(ci[0])} to {_pct(ci[1])})" if ci else ""
    return f"{_pct(figures.get(name))}{interval}"


def threshold_rule(target_sensitivity: float, confidence: float | None) -> str:
    """The threshold rule in words."""
    if confidence is None:
        return f"expected sensitivity on new films at least {target_sensitivity:.0%}"
    return (f"sensitivity on new films at least {target_sensitivity:.0%} with "
            f"{confidence:.0%} confidence")


def _spread_html(report: dict) -> str:
    spread_ = report["split_spread"]
    if not spread_["splits"]:
        return ""
    sens, spec = spread_["sensitivity"], spread_["specificity"]
    return (f"<p>The table is one split of the patients into halves. Over {spread_['splits']} "
            f"splits the held-out sensitivity was {_pct(sens['median'])} (median; 5th to 95th "
            f"percentile {_pct(sens['p5'])} to {_pct(sens['p95'])}) and the specificity "
            f"{_pct(spec['median'])} ({_pct(spec['p5'])} to {_pct(spec['p95'])}); the "
            "sensitivity fell below the target on "
            f"{_pct(spread_['share_sensitivity_below_target'])} of the splits.</p>")


def render_html(report: dict, figures: dict[str, Path]) -> str:
    """One HTML page with the figures inlined (base64 PNG): it can be mailed or archived alone."""
    e = html.escape
    point = report["operating_point"]
    site_fig, model_fig = report["site_threshold"], report["model_threshold"]
    rows = "".join(
        f"<tr><th>{e(label)}</th><td>{_with_ci(site_fig, key)}</td>"
        f"<td>{_with_ci(model_fig, key)}</td></tr>"
        for label, key in (("Sensitivity", "sensitivity"), ("Specificity", "specificity"),
                           ("PPV", "ppv"), ("NPV", "npv")))
    confusion = "".join(
        f"<tr><th>{e(k.upper())}</th><td>{site_fig['confusion'][k]}</td>"
        f"<td>{model_fig['confusion'][k]}</td></tr>" for k in ("tp", "fn", "tn", "fp"))
    images = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{e(name)}</figcaption>'
        "</figure>" for name, path in figures.items())
    calibration = point["calibration"]
    fit = ("identity (refused: " + e(report["calibration_refused"]) + ")"
           if report["calibration_refused"] else
           f"Platt: slope {calibration['slope']:.4f}, intercept {calibration['intercept']:.4f}")
    auroc_ci = report["auroc_ci"] or [float("nan")] * 2
    rule = threshold_rule(report["target_sensitivity"], report["sensitivity_confidence"])
    note = f"<p><strong>{e(report['threshold_note'])}</strong></p>" \
        if report["threshold_note"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Local validation: site {e(report['site'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.3em .6em}}
figure{{display:inline-block}}
img{{max-width:28em}}</style></head><body>
<h1>Local validation report: site {e(report['site'])}</h1>
<p>Model {e(str(report['model_name']))} version {e(str(report['model_version']))};
{report['n']} images ({report['n_pneumonia']} pneumonia, {report['n_normal']} normal) from
{report['n_groups']} patients; data fingerprint
<code>{e(report['data_fingerprint'][:16])}</code>.</p>
<p>AUROC {report['auroc']:.4f} (95% CI {auroc_ci[0]:.4f} to {auroc_ci[1]:.4f}).
Figures at the site's operating point are cross-fitted: fitted on one half of the patients and
measured on the other, both ways; no image is measured by a point fitted on it.</p>
<h2>Operating point</h2>
<p>Calibration: {fit}. Threshold {point['threshold']:.4f} on the calibrated scale ({e(rule)});
the model's own threshold is {model_fig['threshold']:.4f}. Fitted {e(point['fitted_at'])}.</p>
{note}
<table><tr><th></th><th>site operating point (cross-fitted)</th><th>model's own threshold</th></tr>
{rows}{confusion}</table>
{_spread_html(report)}
<p>ECE ({report['ece_bins']} bins): {report['ece_before']:.4f} before, {report['ece_after']:.4f}
after (cross-fitted).</p>
<h2>Figures</h2>{images}
</body></html>
"""
