"""The pixel checks (shared.imaging.pixel_checks) measured: their statistics on every in-scope
film of the data sets and on synthetic noise, blank and colour images, and their cost per image.

    python -m bench.pixel_checks [--data ../shared/data] [--out out/pixel_checks.json]

In-scope films are every image of `chest_xray/`, `site_acceptance/` and `nih_adult/` (the goal
is none refused); `out_of_scope/` is reported per category for information (the pixel checks are
not meant to catch grey photographs, CT or lateral films: the model's screening is). The cost is
the median CPU time of `pixel_stats` on decoded pixels, for a training-size film (224 px), a 512 px
film and a full-size 2,500 x 2,048 film, grey and colour.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from shared.contract import REFUSING_REASONS
from shared.imaging import DecodeLimits, decode_xray
from shared.imaging.pixel_checks import (
    BLANK_MAX_SPREAD,
    CHROMA_LEVEL,
    COLOUR_MIN_FRACTION,
    NOISE_MAX_CORRELATION,
    colour_sample,
    pixel_stats,
)

IN_SCOPE_SETS = ("chest_xray", "site_acceptance", "nih_adult")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm"}


def images(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)


def _encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def _film_like(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth film-like grey image (body, two dark lungs) with mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    body = 170 - 60 * (((xx - width / 2) / (width / 2)) ** 2)
    lungs = 90 * (np.exp(-(((xx - 0.32 * width) / (width / 8)) ** 2
                           + ((yy - height / 2) / (height / 4)) ** 2))
                  + np.exp(-(((xx - 0.68 * width) / (width / 8)) ** 2
                             + ((yy - height / 2) / (height / 4)) ** 2)))
    return np.clip(body - lungs + rng.normal(0, 8, (height, width)), 0, 255).astype(np.uint8)


def synthetic_cases() -> dict[str, tuple[str, Callable[[], bytes]]]:
    """name -> (expected reason or "" for none, bytes maker)."""
    rng = np.random.default_rng(0)
    cases: dict[str, tuple[str, Callable[[], bytes]]] = {}
    for side in (224, 512, 2048):
        uniform = rng.integers(0, 256, (side, side), dtype=np.uint8)
        gauss = np.clip(rng.normal(128, 40, (side, side)), 0, 255).astype(np.uint8)
        cases[f"uniform noise {side} PNG"] = ("noise_image", lambda a=uniform: _encode(a, "PNG"))
        cases[f"gaussian noise {side} PNG"] = ("noise_image", lambda a=gauss: _encode(a, "PNG"))
        for quality in (75, 95):
            cases[f"uniform noise {side} JPEG q{quality}"] = (
                "noise_image", lambda a=uniform, q=quality: _encode(a, "JPEG", quality=q))
    for value, name in ((0, "black"), (255, "white"), (128, "grey")):
        flat = np.full((1024, 1024), value, np.uint8)
        cases[f"all {name} PNG"] = ("blank_image", lambda a=flat: _encode(a, "PNG"))
        cases[f"all {name} JPEG"] = ("blank_image", lambda a=flat: _encode(a, "JPEG", quality=90))
    nearly = np.clip(128 + rng.normal(0, 2, (1024, 1024)), 0, 255).astype(np.uint8)
    cases["nearly flat (grey +/- 2) PNG"] = ("blank_image", lambda: _encode(nearly, "PNG"))
    labelled = np.zeros((1024, 1024), np.uint8)
    labelled[40:80, 40:170] = 255  # a white label on black: 0.5 % of the pixels
    cases["black with a small white label PNG"] = ("blank_image", lambda: _encode(labelled, "PNG"))
    colour_noise = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    cases["colour noise JPEG"] = ("colour_image", lambda: _encode(colour_noise, "JPEG"))
    yy, xx = np.mgrid[0:768, 0:1024] / 1024.0
    photo = np.stack([200 * xx + 30, 160 * (1 - yy) + 40, 120 + 80 * np.sin(6 * xx)], axis=2)
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    cases["smooth colour picture JPEG"] = ("colour_image", lambda: _encode(photo, "JPEG"))
    film = _film_like(1024, 880, 1)
    tinted = np.stack([film, film, film], axis=2).astype(np.int16)
    tinted[..., 2] = np.clip(tinted[..., 2] - 40, 0, 255)  # a sepia-like tint over all of it
    cases["tinted film (sepia) JPEG"] = ("colour_image",
                                         lambda: _encode(tinted.astype(np.uint8), "JPEG"))
    grey_rgb = np.stack([film] * 3, axis=2)
    cases["grey film saved as RGB JPEG"] = ("", lambda: _encode(grey_rgb, "JPEG", quality=75))
    cases["grey film saved as RGB PNG"] = ("", lambda: _encode(grey_rgb, "PNG"))
    marked = grey_rgb.copy()
    marked[60:120, 60:200] = (255, 0, 0)  # a red marker, about 1 % of the film
    cases["grey film with a red marker JPEG"] = ("", lambda: _encode(marked, "JPEG"))
    cases["synthetic film 1024 x 880 PNG"] = ("", lambda: _encode(film, "PNG"))
    return cases


def measure_sets(data: Path, limits: DecodeLimits) -> dict[str, object]:
    report: dict[str, object] = {}
    for name in IN_SCOPE_SETS:
        spreads, correlations, colours, refused = [], [], [], []
        modes: Counter[str] = Counter()
        for path in images(data / name):
            decoded = decode_xray(path.read_bytes(), limits)
            stats = decoded.pixel_stats
            assert stats is not None
            modes[str(decoded.metadata.get("mode", decoded.format))] += 1
            spreads.append(stats.spread)
            if stats.correlation is not None:
                correlations.append(stats.correlation)
            if stats.colour_fraction is not None:
                colours.append(stats.colour_fraction)
            reasons = stats.reasons()
            if reasons:
                refused.append({"path": str(path.relative_to(data)), "reasons": list(reasons)})
        report[name] = {
            "images": len(spreads), "modes": dict(modes), "refused": len(refused),
            "refused_files": refused[:20],
            "spread_min": int(min(spreads)), "spread_p01": float(np.percentile(spreads, 1)),
            "correlation_min": round(min(correlations), 4),
            "correlation_p01": round(float(np.percentile(correlations, 1)), 4),
            "colour_images": len(colours),
            "colour_fraction_max": round(max(colours), 4) if colours else None,
        }
    oos: dict[str, Counter[str]] = {}
    for path in images(data / "out_of_scope"):
        category = path.relative_to(data / "out_of_scope").parts[0]
        decoded = decode_xray(path.read_bytes(), limits)
        counter = oos.setdefault(category, Counter())
        counter["images"] += 1
        for reason in decoded.scope_reasons:
            counter[reason] += 1
        if set(decoded.scope_reasons) & REFUSING_REASONS:
            counter["refused"] += 1
    report["out_of_scope"] = {category: dict(counts) for category, counts in oos.items()}
    return report


def measure_synthetic(limits: DecodeLimits) -> list[dict[str, object]]:
    rows = []
    for name, (expected, make) in synthetic_cases().items():
        decoded = decode_xray(make(), limits)
        stats = decoded.pixel_stats
        assert stats is not None
        reasons = list(stats.reasons())
        rows.append({"case": name, "expected": expected or None, "reasons": reasons,
                     "ok": (expected in reasons) if expected else not reasons,
                     "spread": stats.spread,
                     "correlation": None if stats.correlation is None
                     else round(stats.correlation, 4),
                     "colour_fraction": None if stats.colour_fraction is None
                     else round(stats.colour_fraction, 4)})
    return rows


def _median_ms(run: Callable[[], object], repeat: int, batch: int = 20) -> float:
    """Median CPU time (this thread's, so other processes on a shared machine do not count) of
    one call, over `repeat` batches of `batch` calls."""
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(batch):
            run()
        times.append((time.thread_time() - start) / batch)
    return round(1000 * float(np.median(times)), 4)


def measure_cost(repeat: int = 30) -> dict[str, float]:
    """Median ms of the checks on decoded pixels; colour adds sampling the decoded RGB image."""
    cost = {}
    for height, width in ((224, 224), (512, 420), (2500, 2048)):
        film = _film_like(height, width, 2)
        cost[f"grey {width}x{height}"] = _median_ms(lambda f=film: pixel_stats(f), repeat)
        image = Image.fromarray(np.stack([film] * 3, axis=2))
        cost[f"colour {width}x{height}"] = _median_ms(
            lambda f=film, i=image: pixel_stats(f, colour_sample(i)), repeat)
    return cost


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("out/pixel_checks.json"))
    parser.add_argument("--skip-sets", action="store_true", help="synthetic cases and cost only")
    args = parser.parse_args(argv)
    limits = DecodeLimits()
    report: dict[str, object] = {
        "thresholds": {"blank_max_spread": BLANK_MAX_SPREAD,
                       "noise_max_correlation": NOISE_MAX_CORRELATION,
                       "chroma_level": CHROMA_LEVEL, "colour_min_fraction": COLOUR_MIN_FRACTION},
        "synthetic": measure_synthetic(limits),
        "cost_ms": measure_cost(),
    }
    if not args.skip_sets and not (args.data / IN_SCOPE_SETS[0]).is_dir():
        print(f"no data sets under {args.data}: measuring the synthetic cases and the cost only")
    elif not args.skip_sets:
        report["sets"] = measure_sets(args.data, limits)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
