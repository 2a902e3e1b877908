"""The bundled version carries its own model card and metrics (shown by /v1/models/current)."""

from __future__ import annotations

import json

from shared.contract import ASSETS_EXTRA, METRICS_FILE, MODEL_CARD_FILE, MODEL_INFO_FILE
from tests.support.procs import REPO_ROOT

MODELS = REPO_ROOT / "models"


def bundled_versions() -> list:
    return sorted(p for p in (MODELS / "cxr-pneumonia").iterdir()
                  if p.name.isdigit() and (p / "saved_model.pb").is_file())


def test_the_newest_bundled_version_ships_the_model_card_of_the_repository():
    newest = bundled_versions()[-1]
    shipped = (newest / ASSETS_EXTRA / MODEL_CARD_FILE).read_text()
    assert shipped == (MODELS / "MODEL_CARD.md").read_text(), (
        f"copy models/MODEL_CARD.md to {newest.name}/{ASSETS_EXTRA}/{MODEL_CARD_FILE}")


def test_the_bundled_metrics_are_the_figures_of_the_model_card():
    newest = bundled_versions()[-1]
    metrics = json.loads((newest / ASSETS_EXTRA / METRICS_FILE).read_text())["metrics"]
    info = json.loads((newest / ASSETS_EXTRA / MODEL_INFO_FILE).read_text())
    assert metrics["threshold"] == info["threshold"]
    card = (MODELS / "MODEL_CARD.md").read_text()
    rows = {"gate": "| gate set", "site_acceptance": "| `site_acceptance` (later",
            "nih_adult": "| `nih_adult`"}
    for prefix, start in rows.items():
        row = next(line for line in card.splitlines()
                   if line.startswith(start)).replace("**", "")
        assert f"| {metrics[f'{prefix}.n']} |" in row, prefix
        auroc = (f"{metrics[f'{prefix}.auroc']:.3f} ({metrics[f'{prefix}.auroc_ci.0']:.3f}-"
                 f"{metrics[f'{prefix}.auroc_ci.1']:.3f})")
        assert auroc in row, (prefix, auroc, row)
        for rate in ("sensitivity", "specificity", "ece"):
            assert f"{metrics[f'{prefix}.{rate}']:.3f}" in row, (prefix, rate, row)
    for key, value in metrics.items():
        assert isinstance(value, int | float), key
