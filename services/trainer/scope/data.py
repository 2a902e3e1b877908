"""Images for the scope-screening network: in-scope films, out-of-scope images and synthetic ones.

Every image goes through the serving path (`decode_xray`, then `to_model_input` to 224 x 224) and
is then average-pooled by `SCOPE_POOL` to the screening network's own resolution, exactly as the
exported model pools its input. Groups (what a training run may hold out, and what a figure
reports) are named by `category`: the folders of `out_of_scope/`, `skimage` (scikit-image sample
images not among those folders) and the synthetic kinds of `SYNTHETIC_KINDS`.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from services.trainer.data.dataset import map_with_progress, read_pixels, scan_dataset
from services.trainer.data.splits import split_by_patient
from shared.imaging import decode_xray, to_model_input

INPUT_SIZE = 224  # what the served model receives
SCOPE_POOL = 4  # the screening network sees INPUT_SIZE // SCOPE_POOL pixels a side
SCOPE_SIZE = INPUT_SIZE // SCOPE_POOL

OUT_OF_SCOPE_NEGATIVES = ("other_radiograph", "ct", "natural_screenshot")
LATERAL = "lateral_cxr"
SKIMAGE = "skimage"
SYNTHETIC_KINDS = ("noise", "gradient_flat", "text_document", "shapes")
# scikit-image samples already among `out_of_scope/natural_screenshot` are left out of SKIMAGE.
SKIMAGE_SAMPLES = ("binary_blobs", "brick", "cell", "checkerboard", "clock", "coffee", "coins",
                   "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                   "immunohistochemistry", "logo", "microaneurysms", "moon", "retina", "rocket",
                   "shepp_logan_phantom", "text")
ADULT_AGE = 18


def pool(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 224, 224, 1] -> float32 [N, 56, 56, 1]: the mean of each SCOPE_POOL square."""
    n, size = images.shape[0], images.shape[1]
    side = size // SCOPE_POOL
    blocks = images.reshape(n, side, SCOPE_POOL, side, SCOPE_POOL, 1).astype(np.float32)
    return blocks.mean(axis=(2, 4))


def _model_input_of_array(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
    if array.ndim == 3:
        array = np.asarray(Image.fromarray(array[..., :3]).convert("L"))
    return to_model_input(array, INPUT_SIZE)


def load_files(paths: Sequence[Path]) -> np.ndarray:
    """Model inputs [N, 224, 224, 1] of image files, decoded as the service decodes uploads."""
    out = np.empty((len(paths), INPUT_SIZE, INPUT_SIZE, 1), np.uint8)

    def fill(index: int) -> None:
        out[index] = to_model_input(decode_xray(Path(paths[index]).read_bytes()).pixels, INPUT_SIZE)

    map_with_progress(fill, range(len(paths)), "loading images")
    return out


def skimage_images() -> np.ndarray:
    return np.stack([_model_input_of_array(getattr(skimage.data, name)())
                     for name in SKIMAGE_SAMPLES])


# --- synthetic out-of-scope images (224 x 224 uint8) --------------------------------------------


def _stretch(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    low, high = np.percentile(values, [1, 99])
    values = (values - low) / max(high - low, 1e-9)
    lo, hi = sorted(rng.uniform(0, 255, 2))
    if hi - lo < 40:
        lo, hi = 0.0, 255.0
    return np.clip(lo + values * (hi - lo), 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, s: int) -> np.ndarray:
    kind = rng.integers(5)
    if kind == 0:
        values = rng.normal(size=(s, s))
    elif kind == 1:
        values = rng.uniform(size=(s, s))
    elif kind == 2:
        values = (rng.uniform(size=(s, s)) < rng.uniform(0.05, 0.5)).astype(float)
    elif kind == 3:
        values = gaussian_filter(rng.normal(size=(s, s)), rng.uniform(1, 25))
    else:  # 1/f (pink) noise
        freq = np.hypot(*np.meshgrid(np.fft.fftfreq(s), np.fft.fftfreq(s)))
        spectrum = (rng.normal(size=(s, s)) + 1j * rng.normal(size=(s, s))) / np.maximum(
            freq, 1.0 / s) ** rng.uniform(0.5, 1.5)
        values = np.real(np.fft.ifft2(spectrum))
    return _stretch(values, rng)


def _gradient_flat(rng: np.random.Generator, s: int) -> np.ndarray:
    y, x = np.mgrid[0:s, 0:s] / s
    kind = rng.integers(4)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        values = np.cos(angle) * x + np.sin(angle) * y
    elif kind == 1:
        cy, cx = rng.uniform(-0.2, 1.2, 2)
        values = np.hypot(x - cx, y - cy)
    elif kind == 2:
        values = np.full((s, s), rng.uniform()) + rng.normal(0, 0.01, (s, s))
        return np.clip(values * 255, 0, 255).astype(np.uint8)
    else:  # two or three flat bands
        values = np.floor(x * rng.integers(2, 4)) if rng.random() < 0.5 else np.floor(
            y * rng.integers(2, 4))
        values = values + rng.normal(0, 0.02, (s, s))
    return _stretch(values, rng)


def _font(rng: np.random.Generator, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_document(rng: np.random.Generator, s: int) -> np.ndarray:
    scale = int(rng.choice([1, 2, 3]))
    big = s * scale
    dark = rng.random() < 0.25
    paper, ink = (30, 220) if dark else (int(rng.integers(200, 256)), int(rng.integers(0, 80)))
    image = Image.new("L", (big, big), paper)
    draw = ImageDraw.Draw(image)
    letters = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;-%()"
    y = int(rng.integers(2, 20))
    if rng.random() < 0.4:  # a window or form: boxes and bars
        for _ in range(int(rng.integers(2, 8))):
            x0, y0 = rng.integers(0, big, 2)
            x1, y1 = x0 + rng.integers(10, big // 2), y0 + rng.integers(8, big // 3)
            draw.rectangle((int(x0), int(y0), int(x1), int(y1)),
                           fill=int(rng.integers(0, 256)) if rng.random() < 0.5 else None,
                           outline=ink)
    while y < big:
        size = int(rng.integers(8, 28))
        text = "".join(rng.choice(list(letters), int(rng.integers(10, 80))))
        draw.text((int(rng.integers(2, 30)), y), text, fill=ink, font=_font(rng, size))
        if rng.random() < 0.15:  # a table rule
            draw.line((0, y + size + 2, big, y + size + 2), fill=ink, width=1)
        y += int(size * rng.uniform(1.1, 2.2))
    array = np.asarray(image)
    return to_model_input(array, s)[..., 0]


def _shapes(rng: np.random.Generator, s: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # checkerboard or stripes
        period = int(rng.integers(4, 64))
        y, x = np.mgrid[0:s, 0:s]
        values = ((x // period) + (y // period)) % 2 if rng.random() < 0.5 else (x // period) % 2
        return _stretch(values.astype(float) + rng.normal(0, 0.05, (s, s)), rng)
    image = Image.new("L", (s, s), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 25))):
        x0, y0, x1, y1 = (int(v) for v in np.sort(rng.integers(0, s, 4).reshape(2, 2), axis=0).T
                          .ravel()[[0, 2, 1, 3]])
        fill = int(rng.integers(0, 256))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse((x0, y0, x1 + 2, y1 + 2), fill=fill)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.line((x0, y0, x1, y1), fill=fill, width=int(rng.integers(1, 10)))
    array = np.asarray(image, dtype=float)
    if kind == 2:
        array = gaussian_filter(array, rng.uniform(0.5, 6))
    return np.clip(array, 0, 255).astype(np.uint8)


SYNTHESISERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "noise": _noise, "gradient_flat": _gradient_flat, "text_document": _text_document,
    "shapes": _shapes,
}


def synthesise(kind: str, count: int, seed: int) -> np.ndarray:
    """`count` synthetic images of `kind`, uint8 [N, 224, 224, 1]."""
    rng = np.random.default_rng([seed, SYNTHETIC_KINDS.index(kind)])
    return np.stack([SYNTHESISERS[kind](rng, INPUT_SIZE) for _ in range(count)])[..., None]


# --- the whole collection ------------------------------------------------------------------------


@dataclass
class ScopeData:
    """Pooled images [N, 56, 56, 1] float32 by role; `negatives` by category."""

    train_films: np.ndarray  # paediatric frontal films (chest_xray), training patients
    calib_films: np.ndarray  # held back: thresholds
    test_films: np.ndarray  # held back: figures
    adult_train: np.ndarray
    adult_test: np.ndarray
    nih_minors: np.ndarray  # NIH patients under ADULT_AGE: reported, never trained
    lateral: np.ndarray
    negatives: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _nih_split(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(adult training, adult test, minors) by a hash of the patient: 60 % / 40 % of adults."""
    train, test, minors = [], [], []
    with open(root / "manifest.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            path = root / row["path"]
            if int(row["age"]) < ADULT_AGE:
                minors.append(path)
                continue
            bucket = int(hashlib.sha256(row["patient"].encode()).hexdigest(), 16) % 10
            (test if bucket < 4 else train).append(path)
    return train, test, minors


def _cached(cache: Path | None, name: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    if cache is None:
        return make()
    path = cache / f"{name}.npy"
    if path.is_file():
        return np.load(path)
    array = make()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return array


def load_scope_data(data_root: Path, *, synthetic_per_kind: int = 400, seed: int = 0,
                    max_films: int | None = None, cache: Path | None = None) -> ScopeData:
    """Everything the screening network trains and is measured on, pooled to 56 x 56.

    `data_root` holds `chest_xray/`, `nih_adult/` and `out_of_scope/`. In-scope paediatric films:
    70 % of patients train, 15 % calibrate the thresholds, 15 % are held for figures.
    """
    records = scan_dataset(data_root / "chest_xray", find_duplicates=True)
    if max_films is not None and len(records) > max_films:
        picked = np.random.default_rng(seed).choice(len(records), max_films, replace=False)
        records = [records[i] for i in sorted(picked)]
    rest, held = split_by_patient(records, 0.3, seed=seed)
    calib, test = split_by_patient(held, 0.5, seed=seed)

    def films(part: list) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            out = np.empty((len(part), INPUT_SIZE, INPUT_SIZE, 1), np.uint8)

            def fill(i: int) -> None:
                out[i] = to_model_input(read_pixels(part[i]), INPUT_SIZE)

            map_with_progress(fill, range(len(part)), "loading films")
            return pool(out)
        return make

    tag = f"s{seed}-n{len(records)}"
    nih_train, nih_test, nih_minors = _nih_split(data_root / "nih_adult")
    oos = data_root / "out_of_scope"
    data = ScopeData(
        train_films=_cached(cache, f"train-{tag}", films(rest)),
        calib_films=_cached(cache, f"calib-{tag}", films(calib)),
        test_films=_cached(cache, f"test-{tag}", films(test)),
        adult_train=_cached(cache, "adult-train", lambda: pool(load_files(nih_train))),
        adult_test=_cached(cache, "adult-test", lambda: pool(load_files(nih_test))),
        nih_minors=_cached(cache, "nih-minors", lambda: pool(load_files(nih_minors))),
        lateral=_cached(cache, "lateral", lambda: pool(load_files(sorted(
            (oos / LATERAL).iterdir())))),
    )
    for category in OUT_OF_SCOPE_NEGATIVES:
        data.negatives[category] = _cached(cache, f"oos-{category}", lambda c=category: pool(
            load_files(sorted((oos / c).iterdir()))))
    data.negatives[SKIMAGE] = _cached(cache, "skimage", lambda: pool(skimage_images()))
    for kind in SYNTHETIC_KINDS:
        data.negatives[kind] = _cached(
            cache, f"synthetic-{kind}-{synthetic_per_kind}-s{seed}",
            lambda k=kind: pool(synthesise(k, synthetic_per_kind, seed)))
    data.counts = {
        "train_films": len(data.train_films), "calib_films": len(data.calib_films),
        "test_films": len(data.test_films), "adult_train": len(data.adult_train),
        "adult_test": len(data.adult_test), "nih_minors": len(data.nih_minors),
        "lateral": len(data.lateral), **{k: len(v) for k, v in data.negatives.items()},
    }
    return data
