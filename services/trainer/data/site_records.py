"""A site's labelled acceptance set: a Kaggle-layout folder or a CSV of `file,label[,patient]`."""

from __future__ import annotations

import csv
from pathlib import Path

from services.trainer.data.dataset import DatasetError, assign_duplicate_groups, scan_dataset
from services.trainer.data.naming import is_image_file_name, parse_file_name
from services.trainer.data.records import XrayRecord


def read_site_records(data: Path) -> list[XrayRecord]:
    """A Kaggle-layout folder (`NORMAL/`, `PNEUMONIA/`) or a CSV of `file,label[,patient]`."""
    if data.is_file():
        return _read_csv(data)
    return scan_dataset(data)


def _read_csv(path: Path) -> list[XrayRecord]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DatasetError(f"{path}: a site CSV needs the columns file,label (and may add patient)")
    records = []
    for number, row in enumerate(rows, start=2):
        label = row["label"].strip().upper()
        label = {"1": "PNEUMONIA", "0": "NORMAL"}.get(label, label)
        if label not in ("NORMAL", "PNEUMONIA"):
            raise DatasetError(f"{path}:{number}: label {row['label']!r} is not NORMAL/PNEUMONIA")
        file = (path.parent / row["file"].strip()).resolve()
        if not file.is_file() or not is_image_file_name(file.name):
            raise DatasetError(f"{path}:{number}: {row['file']!r} is not an image file")
        parsed = parse_file_name(file.name)
        patient = (row.get("patient") or "").strip() or parsed.patient
        records.append(XrayRecord(path=file, label=label, patient=patient,  # type: ignore[arg-type]
                                  subtype=parsed.subtype if label == "PNEUMONIA" else None))
    records.sort(key=lambda r: r.relative_path)
    return assign_duplicate_groups(records)
