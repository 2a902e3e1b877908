"""Exploring the data set: one pass over every image, then figures and a summary (JSON, Markdown).

`python -m services.trainer explore --data DIR --out DIR`. Each image is decoded once by
`shared.imaging` to read its original size, its 256-bin intensity histogram (every pixel, no
sampling) and its pixel digest (for exact duplicates).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from services.trainer.data.dataset import (
    assign_duplicate_groups,
    data_fingerprint,
    map_with_progress,
    scan_dataset,
)
from services.trainer.data.records import LABELS, XrayRecord
from services.trainer.explore import plots
from services.trainer.explore.facts import ImageFacts, inspect_image
from services.trainer.explore.plots import CLASS_ORDER

NO_SPLIT = "all"
T = TypeVar("T")


def class_name(record: XrayRecord) -> str:
    """normal, bacterial, viral, or pneumonia_unknown when the name gives no subtype."""
    if record.label == "NORMAL":
        return "normal"
    return record.subtype or "pneumonia_unknown"


def explore(data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            samples_per_class: int = 6, seed: int = 0) -> dict[str, Any]:
    """Write every figure, `summary.json` and `summary.md` into `out_dir`; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = scan_dataset(data_dir, find_duplicates=False)
    facts = map_with_progress(inspect_image, records, "reading images")
    assign_duplicate_groups(records, [f.digest for f in facts])
    classes = [class_name(r) for r in records]

    figures = {
        "sample_grid": plots.sample_grid(records, classes, samples_per_class, seed, out),
        "intensity_histograms": plots.intensity_histograms(
            classes, [f.histogram for f in facts], out),
        "class_distribution": plots.class_distribution(Counter(classes), out),
        "image_sizes_box": plots.image_sizes(classes, facts, "box", out),
        "image_sizes_violin": plots.image_sizes(classes, facts, "violin", out),
        "patients_per_class": plots.patients_per_class(_patients_by_class(records), out),
        "images_per_patient": plots.images_per_patient(_images_per_patient(records), out),
    }
    summary = build_summary(records, classes, facts)
    summary["data_dir"] = str(data_dir)
    summary["figures"] = {name: path.name for name, path in figures.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def build_summary(records: list[XrayRecord], classes: list[str],
                  facts: list[ImageFacts]) -> dict[str, Any]:
    """Counts per split, class and subtype; patients; duplicate groups; sizes; intensities."""
    by_split: dict[str, Counter[str]] = defaultdict(Counter)
    for record, cls in zip(records, classes, strict=True):
        by_split[record.split or NO_SPLIT][cls] += 1
        by_split[record.split or NO_SPLIT][record.label] += 1
    duplicates: dict[str, list[str]] = defaultdict(list)
    for record in records:
        if record.dup_group:
            duplicates[record.dup_group].append(record.relative_path)
    per_patient = _images_per_patient(records)
    splits_of_patient: dict[str, set[str]] = defaultdict(set)
    for record in records:
        splits_of_patient[record.patient].add(record.split or NO_SPLIT)
    return {
        "images": len(records),
        "by_class": _in_class_order(Counter(classes)),
        "by_label": _in_label_order(Counter(r.label for r in records)),
        "by_split": {split: {**_in_class_order(counts), **_in_label_order(counts)}
                     for split, counts in sorted(by_split.items())},
        "patients": {
            "total": len(per_patient),
            "by_class": _in_class_order(
                {c: len(p) for c, p in _patients_by_class(records).items()}),
            "in_several_splits": sorted(p for p, s in splits_of_patient.items() if len(s) > 1),
            "images_per_patient": _stats(list(per_patient.values())),
        },
        "duplicate_groups": {
            "groups": len(duplicates),
            "images": sum(len(m) for m in duplicates.values()),
            "members": dict(sorted(duplicates.items())),
        },
        "image_size": {
            "width": _stats([f.width for f in facts]),
            "height": _stats([f.height for f in facts]),
        },
        "intensity": _in_class_order(_intensity_by_class(classes, facts)),
        "fingerprint": data_fingerprint(records),
    }


def _in_class_order(by_class: Mapping[str, T]) -> dict[str, T]:
    return {c: by_class[c] for c in CLASS_ORDER if c in by_class}


def _in_label_order(by_label: Mapping[str, T]) -> dict[str, T]:
    return {label: by_label[label] for label in LABELS if label in by_label}


def _patients_by_class(records: list[XrayRecord]) -> dict[str, set[str]]:
    """Patients with at least one image of the class (a patient can have both subtypes)."""
    patients: dict[str, set[str]] = defaultdict(set)
    for record in records:
        patients[class_name(record)].add(record.patient)
    return patients


def _images_per_patient(records: list[XrayRecord]) -> dict[str, int]:
    return dict(Counter(r.patient for r in records))


def _stats(values: list[int]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "median": float(np.median(array)),
            "mean": round(float(array.mean()), 3), "max": float(array.max())}


def _intensity_by_class(classes: list[str], facts: list[ImageFacts]) -> dict[str, dict[str, float]]:
    totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(256, dtype=np.int64))
    for cls, fact in zip(classes, facts, strict=True):
        totals[cls] += fact.histogram
    levels = np.arange(256)
    result = {}
    for cls, hist in sorted(totals.items()):
        mean = float((levels * hist).sum() / hist.sum())
        std = float(np.sqrt(((levels - mean) ** 2 * hist).sum() / hist.sum()))
        result[cls] = {"mean": round(mean, 2), "std": round(std, 2)}
    return result


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a short Markdown report with tables."""
    class_names = list(summary["by_class"])
    lines = [
        "# Chest X-ray data set summary",
        "",
        f"Data: `{summary['data_dir']}`; {summary['images']} images; "
        f"{summary['patients']['total']} patients; fingerprint `{summary['fingerprint'][:16]}`.",
        "",
        "## Images per split and class",
        "",
        "| split | " + " | ".join(class_names) + " | NORMAL | PNEUMONIA |",
        "|---" * (len(class_names) + 3) + "|",
    ]
    for split, counts in summary["by_split"].items():
        cells = [str(counts.get(c, 0)) for c in [*class_names, "NORMAL", "PNEUMONIA"]]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    patients = summary["patients"]
    per_patient = patients["images_per_patient"]
    lines += [
        "",
        "## Patients",
        "",
        "| class | patients |",
        "|---|---|",
        *[f"| {c} | {n} |" for c, n in patients["by_class"].items()],
        "",
        f"Images per patient: median {per_patient['median']:g}, mean {per_patient['mean']:g}, "
        f"max {per_patient['max']:g}. A patient can have both bacterial and viral images.",
        f"Patients in more than one split: {len(patients['in_several_splits'])}.",
        "",
        "## Exact duplicates (identical decoded pixels)",
        "",
        f"{summary['duplicate_groups']['groups']} groups holding "
        f"{summary['duplicate_groups']['images']} images; splits keep each group on one side.",
        "",
        "## Image size (decoded, original)",
        "",
        "| side | min | median | mean | max |",
        "|---|---|---|---|---|",
    ]
    for side in ("width", "height"):
        s = summary["image_size"][side]
        lines.append(f"| {side} | {s['min']:g} | {s['median']:g} | {s['mean']:g} | {s['max']:g} |")
    lines += ["", "## Intensity (0..255)", "", "| class | mean | std |", "|---|---|---|"]
    lines += [f"| {c} | {v['mean']} | {v['std']} |" for c, v in summary["intensity"].items()]
    lines += ["", "## Figures", ""]
    lines += [f"- {name}: ![{name}]({file})" for name, file in summary["figures"].items()]
    return "\n".join(lines) + "\n"
