"""Data sets for the dataset and explore tests: Kaggle layouts on disk, records without files."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from services.trainer.data.manifest import TrainingData, collect_training_data
from services.trainer.data.naming import parse_file_name
from services.trainer.data.records import XrayRecord
from shared.feedback import ConfirmedFilm, ModelAnswer
from shared.jobs.keys import confirmed_film_key, confirmed_label_key
from shared.schemas import ModelRef
from shared.storage import LocalStorage
from tests.shared.xray_files import dicom_bytes, jpeg_bytes, png_bytes, xray_dataset


def noise(name: str, height: int = 80, width: int = 72) -> np.ndarray:
    """Pixels unique to `name` (seeded by it), so no two names share an image by chance."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return rng.integers(0, 256, size=(height, width), dtype=np.uint8)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_png(path: Path, pixels: np.ndarray, compress_level: int = 6) -> Path:
    return write(path, png_bytes(Image.fromarray(pixels), compress_level=compress_level))


def kaggle_split_layout(root: Path) -> Path:
    """`root/{train,val,test}/{NORMAL,PNEUMONIA}/...`: every kind of name and file a scan meets."""
    for split, names in {
        "train": ["IM-0115-0001.jpeg", "NORMAL2-IM-0588-0001.png", "person1234_bacteria_3191.jpeg",
                   "person12_virus_44.jpeg", "person12_virus_45"],
        "val": ["IM-0001-0001.jpeg", "person3_bacteria_10.jpeg"],
        "test": ["IM-0002-0001.jpeg", "scan-from-elsewhere.jpg"],
    }.items():
        for name in names:
            label = "NORMAL" if "IM-" in name else "PNEUMONIA"
            write(root / split / label / name, jpeg_bytes(noise(name)))
    pixels = (noise("dicom").astype(np.uint16) * 16)
    write(root / "train" / "PNEUMONIA" / "person77_virus_140.dcm",
          dicom_bytes(xray_dataset(pixels)))
    # Files the scan must leave out: hidden files, a text file, and anything outside class folders.
    write(root / "train" / "NORMAL" / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write(root / "train" / "PNEUMONIA" / "notes.txt", b"not an image")
    write(root / "train" / "README.jpeg", jpeg_bytes(noise("stray")))
    return root


def kaggle_flat_layout(root: Path) -> Path:
    """`root/{NORMAL,PNEUMONIA}/...` with images of different sizes and one unknown-subtype name."""
    write_png(root / "NORMAL" / "IM-0500-0001.png", noise("a", 100, 80))
    write_png(root / "NORMAL" / "IM-0501-0001.png", noise("b", 120, 90))
    write_png(root / "PNEUMONIA" / "person9_bacteria_1.png", noise("c", 70, 140))
    write_png(root / "PNEUMONIA" / "person9_virus_2.png", noise("d", 64, 64))
    write_png(root / "PNEUMONIA" / "clinic-upload-7.png", noise("e", 96, 96))
    return root


def synthetic_records(seed: int = 0, cross_patient_duplicates: int = 12) -> list[XrayRecord]:
    """About 1,500 records named like the real set (no files): 3 series, 1-4 images per patient.

    Some duplicate groups join images of two different patients, so a split that kept only
    patients together would put a copy of an image on both sides.
    """
    rng = np.random.default_rng(seed)
    records: list[XrayRecord] = []

    def add(name: str, label: str, split: str = "train") -> None:
        parsed = parse_file_name(name)
        subtype = parsed.subtype if label == "PNEUMONIA" else None
        records.append(XrayRecord(Path(split, label, name), label, subtype, parsed.patient,
                                  split=split))

    for number in range(1, 201):
        for image in range(int(rng.integers(1, 4))):
            suffix = "" if image == 0 else f"-{image:04d}"
            add(f"IM-{number:04d}-0001{suffix}.jpeg", "NORMAL")
            add(f"NORMAL2-IM-{number:04d}-0001{suffix}.jpeg", "NORMAL")
    image_number = 0
    for number in range(1, 451):
        for _ in range(int(rng.integers(1, 5))):
            image_number += 1
            kind = "bacteria" if rng.random() < 0.65 else "virus"
            add(f"person{number}_{kind}_{image_number}.jpeg", "PNEUMONIA")
    # Within one patient: a duplicate pair, like the real set's.
    by_patient: dict[str, list[XrayRecord]] = {}
    for record in records:
        by_patient.setdefault(record.patient, []).append(record)
    for patient in [p for p, members in by_patient.items() if len(members) > 1][::25]:
        for record in by_patient[patient][:2]:
            record.dup_group = f"same-patient-{patient}"
    for index in range(cross_patient_duplicates):
        first, second = rng.choice(len(records), size=2, replace=False)
        for record in (records[first], records[second]):
            if record.dup_group is None:
                record.dup_group = f"cross-patient-{index}"
    return records


# --- versioned training data (services.trainer.data.manifest) -----------------------------------

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
MEDIA = {"jpg": "image/jpeg", "png": "image/png", "dcm": "application/dicom"}


def base_layout(root: Path) -> Path:
    """`train/` and `val/` with normal, bacterial and viral films of a few patients."""
    for split, names in {
        "train": ["IM-0115-0001.jpeg", "IM-0117-0001.jpeg", "person1_bacteria_1.jpeg",
                  "person2_virus_6.jpeg", "person2_virus_7.jpeg"],
        "val": ["IM-0001-0001.jpeg", "person3_bacteria_10.jpeg"],
    }.items():
        for name in names:
            label = "NORMAL" if name.startswith("IM-") else "PNEUMONIA"
            write(root / split / label / name, jpeg_bytes(noise(name)))
    return root


def confirm(storage: LocalStorage, site: str, job_id: str, label: str, when: datetime,
            data: bytes, kind: str = "png", subtype: str | None = None,
            revision: int = 1) -> ConfirmedFilm:
    """A confirmed film as the feedback route stores it (`shared.feedback`)."""
    film_key = confirmed_film_key(site, job_id, MEDIA[kind])
    storage.put(film_key, data)
    film = ConfirmedFilm(
        job_id=job_id, site=site, film=film_key, content_type=MEDIA[kind], source="api",
        label=label, subtype=subtype, reader="dr-a", revision=revision, confirmed_at=when,
        model_answer=ModelAnswer(label="NORMAL", pneumonia_probability=0.2, threshold=0.5,
                                 model=ModelRef(name="cxr-pneumonia", version=3)))
    storage.put(confirmed_label_key(site, job_id), film.model_dump_json().encode())
    return film


def dicom_film(name: str, patient_id: str) -> bytes:
    pixels = noise(name).astype(np.uint16) * 16
    return dicom_bytes(xray_dataset(pixels, PatientID=patient_id, PatientIdentityRemoved="YES"))


def collect(base: Path, storage: LocalStorage | None, tmp_path: Path, cutoff: datetime = T0,
            **kwargs) -> TrainingData:
    """The training data of `world` at `cutoff`, confirmed films copied under `tmp_path`."""
    return collect_training_data(base, ["train", "val"], storage, cutoff, tmp_path / "films",
                                 **kwargs)
