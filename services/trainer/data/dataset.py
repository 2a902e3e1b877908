"""The chest X-ray data set as records: Kaggle layout scan, exact duplicates, fingerprint, pixels.

Layouts read: `DIR/{train,val,test}/{NORMAL,PNEUMONIA}/*` and `DIR/{NORMAL,PNEUMONIA}/*`.
Exact duplicates are found by the sha256 of the DECODED pixels (shape + bytes), because the same
pixels can sit in differently encoded files. The record type is `services.trainer.data.records`;
patient-grouped splits and folds are `services.trainer.data.splits`.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from services.trainer.data.naming import is_image_file_name, parse_file_name
from services.trainer.data.records import LABELS, Label, XrayRecord
from shared.errors import CXRError
from shared.imaging import decode_xray, to_model_input

SPLITS = ("train", "val", "test")

T = TypeVar("T")
R = TypeVar("R")


class DatasetError(ValueError):
    """The data folder cannot be read as a chest X-ray data set (layout, empty, bad image)."""


# --- scanning ---------------------------------------------------------------------------------


def scan_dataset(root: str | os.PathLike[str], splits: Iterable[str] | None = None, *,
                 find_duplicates: bool = True) -> list[XrayRecord]:
    """Every image under `root`, sorted by relative path; duplicates grouped unless told not to."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist or is not a folder")
    split_dirs = {name: path for name, path in _children(root).items() if name in SPLITS}
    wanted = list(splits) if splits is not None else None
    if split_dirs:
        unknown = [s for s in wanted or () if s not in SPLITS]
        if unknown:
            raise DatasetError(f"unknown split(s) {unknown}; expected some of {list(SPLITS)}")
        records = [r for name, path in sorted(split_dirs.items())
                   if wanted is None or name in wanted
                   for r in _scan_class_folders(path, split=name)]
    elif wanted:
        raise DatasetError(f"{root} has no {'/'.join(SPLITS)} folders; cannot read splits {wanted}")
    else:
        records = _scan_class_folders(root, split=None)
    if not records:
        raise DatasetError(
            f"no images found under {root}: expected {{train,val,test}}/{{NORMAL,PNEUMONIA}}/* "
            "or {NORMAL,PNEUMONIA}/*"
        )
    records.sort(key=lambda r: r.relative_path)
    if find_duplicates:
        assign_duplicate_groups(records)
    return records


def _children(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-cased name (class folders are NORMAL/PNEUMONIA in any case)."""
    return {p.name.lower(): p for p in folder.iterdir()
            if p.is_dir() and not p.name.startswith(".")}


def _scan_class_folders(folder: Path, split: str | None) -> list[XrayRecord]:
    records = []
    for label in LABELS:
        class_dir = _children(folder).get(label.lower())
        if class_dir is None:
            continue
        for path in class_dir.iterdir():
            if path.is_file() and is_image_file_name(path.name):
                records.append(_record_for(path, label, split))
    return records


def _record_for(path: Path, label: Label, split: str | None) -> XrayRecord:
    parsed = parse_file_name(path.name)
    subtype = parsed.subtype if label == "PNEUMONIA" else None
    return XrayRecord(path=path, label=label, subtype=subtype, patient=parsed.patient, split=split)


# --- pixels, duplicates, fingerprint ------------------------------------------------------------


def read_pixels(record: XrayRecord) -> np.ndarray:
    """The decoded 2-D uint8 pixels of one record, at their original size, by `shared.imaging`."""
    try:
        return decode_xray(record.path.read_bytes()).pixels
    except (CXRError, OSError) as err:
        reason = err.message if isinstance(err, CXRError) else str(err)
        raise DatasetError(f"{record.path}: {reason}") from err


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 over the array's shape and bytes: equal only for identical images."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(repr((array.shape, array.dtype.str)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def assign_duplicate_groups(records: list[XrayRecord],
                            digests: Sequence[str] | None = None) -> list[XrayRecord]:
    """Set `dup_group` on every record (in place; the list is returned too).

    A group is named by its first member's relative path; a unique image gets None. `digests`
    (one `pixel_digest` per record) may be passed by a caller that has decoded the images already.
    """
    if digests is None:
        digests = map_with_progress(lambda r: pixel_digest(read_pixels(r)), records,
                                    "hashing pixels")
    if len(digests) != len(records):
        raise ValueError(f"{len(digests)} digests for {len(records)} records")
    members: dict[str, list[XrayRecord]] = defaultdict(list)
    for record, digest in zip(records, digests, strict=True):
        members[digest].append(record)
    for group in members.values():
        name = min(r.relative_path for r in group) if len(group) > 1 else None
        for record in group:
            record.dup_group = name
    return records


def data_fingerprint(records: Sequence[XrayRecord]) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs and the counts per class and split.

    Two copies of the same data set give the same fingerprint wherever they sit on disk.
    """
    file_digests = map_with_progress(_file_sha256, records, "fingerprinting", min_items=2000)
    digest = hashlib.sha256()
    for rel_path, file_digest in sorted(zip((r.relative_path for r in records), file_digests,
                                            strict=True)):
        digest.update(f"{rel_path}\t{file_digest}\n".encode())
    counts = Counter((r.split or "", r.label, r.subtype or "") for r in records)
    digest.update(repr(sorted(counts.items())).encode())
    return digest.hexdigest()


def _file_sha256(record: XrayRecord) -> str:
    return hashlib.sha256(record.path.read_bytes()).hexdigest()


# --- model input ------------------------------------------------------------------------------


def load_images(records: Sequence[XrayRecord], size: int = 224,
                cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """uint8 `[N, size, size, 1]` model inputs, in `records` order, via `shared.imaging` only.

    With `cache_dir`, the array is kept as a .npy file keyed by the fingerprint of the records (in
    their order) and the size, so a second run with the same data reads it back at once.
    """
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{data_fingerprint(records)}|{size}|".encode())
        key.update("\n".join(r.relative_path for r in records).encode())
        cache_file = Path(cache_dir) / f"images-{size}px-{len(records)}-{key.hexdigest()[:20]}.npy"
        if cache_file.is_file():
            cached = np.load(cache_file)
            if cached.shape == (len(records), size, size, 1) and cached.dtype == np.uint8:
                return cached
    array = np.empty((len(records), size, size, 1), dtype=np.uint8)

    def fill(index: int) -> None:  # in place: the full set never sits in memory twice
        array[index] = to_model_input(read_pixels(records[index]), size)

    map_with_progress(fill, range(len(records)), f"loading images at {size}px")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(f".{os.getpid()}.partial.npy")
        np.save(partial, array)
        partial.replace(cache_file)  # atomic: a crash never leaves a truncated cache behind
    return array


def map_with_progress(func: Callable[[T], R], items: Sequence[T], desc: str,
                      min_items: int = 200) -> list[R]:
    """`[func(x) for x in items]` on a thread pool with a tqdm bar (shown for long lists only).

    Threads are enough: JPEG/PNG decoding, resizing and hashing release the GIL.
    """
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(func, items)
        return list(tqdm(results, total=len(items), desc=desc, unit="img",
                         disable=len(items) < min_items))
