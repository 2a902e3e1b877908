"""The exploration figures, each a PNG drawn with matplotlib's object API (Agg, no pyplot state)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.trainer.data.dataset import read_pixels
from services.trainer.data.records import XrayRecord
from services.trainer.explore.facts import ImageFacts
from shared.contract import CLASS_NAMES

CLASS_ORDER = (*CLASS_NAMES, "pneumonia_unknown")
CLASS_COLOURS = {"normal": "#2b8cbe", "bacterial": "#e34a33", "viral": "#fdbb84",
                 "pneumonia_unknown": "#999999"}


def _ordered(classes: Sequence[str] | set[str]) -> list[str]:
    return [c for c in CLASS_ORDER if c in set(classes)]


def _save(figure: Figure, out: Path, name: str) -> Path:
    FigureCanvasAgg(figure)
    path = out / f"{name}.png"
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def sample_grid(records: Sequence[XrayRecord], classes: Sequence[str], per_class: int, seed: int,
                out: Path) -> Path:
    """A row of randomly chosen images (seeded) for each class, at their decoded size."""
    rng = np.random.default_rng(seed)
    rows = _ordered(classes)
    figure = Figure(figsize=(2.2 * per_class, 2.4 * len(rows)))
    axes = figure.subplots(len(rows), per_class, squeeze=False)
    for row, cls in enumerate(rows):
        members = [r for r, c in zip(records, classes, strict=True) if c == cls]
        chosen = rng.choice(len(members), size=min(per_class, len(members)), replace=False)
        for col, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if col < len(chosen):
                record = members[int(chosen[col])]
                ax.imshow(read_pixels(record), cmap="gray", vmin=0, vmax=255)
                ax.set_title(record.path.name, fontsize=7)
        axes[row][0].text(-0.08, 0.5, cls, transform=axes[row][0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=11)
    figure.suptitle("Sample images per class")
    return _save(figure, out, "sample_grid")


def intensity_histograms(classes: Sequence[str], histograms: Sequence[np.ndarray],
                         out: Path) -> Path:
    """Pixel-intensity distribution of each class over every pixel of every image."""
    figure = Figure(figsize=(8, 4.5))
    ax = figure.subplots()
    highest = 0.0
    for cls in _ordered(classes):
        total = np.sum([h for h, c in zip(histograms, classes, strict=True) if c == cls], axis=0)
        fractions = total / total.sum()
        ax.plot(np.arange(256), fractions, label=cls, color=CLASS_COLOURS[cls])
        highest = max(highest, float(fractions[1:255].max()))
    ax.set_xlabel("pixel intensity (0 black .. 255 white)")
    ax.set_ylabel("fraction of pixels")
    ax.set_xlim(0, 255)
    # Black borders pile up at 0 (and burnt-out areas at 255); scale to the grey levels in between.
    ax.set_ylim(0, 1.15 * highest)
    ax.legend()
    ax.set_title("Pixel-intensity histograms per class")
    return _save(figure, out, "intensity_histograms")


def class_distribution(counts: Mapping[str, int], out: Path) -> Path:
    """Pie chart of images per class."""
    names = _ordered(set(counts))
    values = [counts[n] for n in names]
    figure = Figure(figsize=(5.5, 5.5))
    ax = figure.subplots()
    ax.pie(values, labels=[f"{n}\n{v}" for n, v in zip(names, values, strict=True)],
           colors=[CLASS_COLOURS[n] for n in names], autopct="%1.1f%%", startangle=90)
    ax.set_title(f"Images per class ({sum(values)} in all)")
    return _save(figure, out, "class_distribution")


def image_sizes(classes: Sequence[str], facts: Sequence[ImageFacts],
                kind: Literal["box", "violin"], out: Path) -> Path:
    """Width and height of the original decoded images, per class, as box or violin plots."""
    names = _ordered(classes)
    figure = Figure(figsize=(10, 4.5))
    for ax, side in zip(figure.subplots(1, 2), ("width", "height"), strict=True):
        data = [[getattr(f, side) for f, c in zip(facts, classes, strict=True) if c == name]
                for name in names]
        if kind == "box":
            ax.boxplot(data, tick_labels=names)
        else:
            ax.violinplot(data, showmedians=True)
            ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_ylabel(f"{side} (pixels)")
        ax.set_title(side)
    figure.suptitle(f"Original image size per class ({kind} plot)")
    return _save(figure, out, f"image_sizes_{kind}")


def patients_per_class(patients: Mapping[str, set[str]], out: Path) -> Path:
    """Bar chart of patients per class (a patient with both subtypes counts in both)."""
    names = _ordered(set(patients))
    values = [len(patients[n]) for n in names]
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    bars = ax.bar(names, values, color=[CLASS_COLOURS[n] for n in names])
    ax.bar_label(bars)
    ax.set_ylabel("patients")
    ax.set_title("Patients per class (a patient with both subtypes counts in both)", fontsize=10)
    return _save(figure, out, "patients_per_class")


def images_per_patient(per_patient: Mapping[str, int], out: Path) -> Path:
    """How many patients have 1, 2, 3 ... images."""
    spread = Counter(per_patient.values())
    counts = sorted(spread)
    figure = Figure(figsize=(7, 4))
    ax = figure.subplots()
    bars = ax.bar([str(c) for c in counts], [spread[c] for c in counts], color="#636363")
    ax.bar_label(bars, fontsize=7)
    ax.set_xlabel("images of the patient")
    ax.set_ylabel("patients")
    ax.set_title(f"Images per patient ({len(per_patient)} patients)")
    return _save(figure, out, "images_per_patient")
