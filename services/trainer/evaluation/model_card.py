"""The model card: a short markdown page logged with every run and shown next to the version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INTENDED_USE = (
    "Decision support for reading paediatric chest X-rays (frontal views): flags images that "
    "look like pneumonia so that a clinician reads them first. It does not replace a "
    "radiologist's report and was not validated on adults or lateral views."
)
DATA_NOTE = (
    "Trained on the Kermany et al. paediatric chest X-ray set (Guangzhou Women and Children's "
    "Medical Center; CC BY 4.0), split by patient. Images from other hospitals, devices or age "
    "groups may score differently: check the gate numbers on local data before use."
)
CARD_METRICS = ("n", "auroc", "auroc_ci", "sensitivity", "specificity", "precision", "npv",
                "accuracy", "f1", "ece", "subtype_auroc")


def _value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def metrics_table(columns: Mapping[str, Mapping[str, Any] | None]) -> str:
    """A markdown table with one row per metric and one column per named metrics dict."""
    present = {name: values for name, values in columns.items() if values}
    header = "| metric | " + " | ".join(present) + " |"
    rule = "|---|" + "---|" * len(present)
    rows = [f"| {metric} | " + " | ".join(_value(v.get(metric)) for v in present.values()) + " |"
            for metric in CARD_METRICS]
    return "\n".join([header, rule, *rows])


def render_model_card(*, model_name: str, threshold: float, temperature: float,
                      params: Mapping[str, Any], validation: Mapping[str, Any],
                      baseline: Mapping[str, Any] | None = None, git_commit: str = "unknown",
                      version: int | None = None, gate: Mapping[str, Any] | None = None) -> str:
    """Markdown: intended use, data, operating point, metrics vs the HOG baseline, gate result."""
    title = f"# Model card: {model_name}" + (f" version {version}" if version else "")
    lines = [
        title, "",
        "## Intended use", INTENDED_USE, "",
        "## Data", DATA_NOTE, "",
        f"Data fingerprint: `{params.get('data_fingerprint', 'unknown')}`; code commit: "
        f"`{git_commit}`.", "",
        "## Operating point",
        f"Decision threshold on p(pneumonia): **{threshold:.4f}** (chosen for sensitivity first); "
        f"temperature scaling T = {temperature:.4f}. The threshold is part of the exported model's "
        "output, so the service always uses this version's own threshold.", "",
        "## Validation (patients never trained on)",
        metrics_table({"CNN": validation, "HOG baseline": baseline}), "",
    ]
    if gate:
        lines += ["## Promotion gate",
                  *(f"- {key}: {_value(value)}" for key, value in gate.items()), ""]
    lines += ["## Hyper-parameters",
              *(f"- {key}: `{_value(value)}`" for key, value in sorted(params.items())), ""]
    return "\n".join(lines)
