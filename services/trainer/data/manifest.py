"""Versioned training data: the base data set plus every site's confirmed films up to a cut-off.

`collect_training_data` scans the base data set (`CXR_DATA_DIR`), reads every confirmed film
(`shared.feedback`, `confirmed/{site}/{job}/` in storage) confirmed at or before the cut-off, drops
any confirmed film whose pixels are also in a site's acceptance set (`CXR_SITE_ACCEPTANCE_SETS`:
those films evaluate the model at the site, so they never train it), and returns the records with a
`DatasetManifest`: every file with its sha256, label, source and site, the counts per source, site
and class, and a fingerprint over the list. `rebuild_training_data` gives back exactly that file
set from a manifest (each file's sha256 checked), with the labels the manifest recorded even if a
reader changed one since.

A confirmed film's patient unit is the de-identified DICOM's patient (else its study, else the job),
named by a hash: the patient-grouped splits (`splits.py`) keep it, and any copy of it, on one side.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, Field
from pydicom import dcmread

from services.trainer.data.dataset import (
    SPLITS,
    DatasetError,
    assign_duplicate_groups,
    map_with_progress,
    pixel_digest,
    read_pixels,
    scan_dataset,
)
from services.trainer.data.records import XrayRecord
from services.trainer.data.site_records import read_site_records
from shared.errors import CXRError
from shared.feedback import ConfirmedFilm
from shared.jobs.keys import CONFIRMED_LABEL_FILE, CONFIRMED_PREFIX
from shared.schemas import UTCDateTime
from shared.storage import Storage

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
MANIFEST_ARTIFACT = "dataset/manifest.json"
BASE_SOURCE: Final = "base"
CONFIRMED_SOURCE: Final = "confirmed"
Source = Literal["base", "confirmed"]
CLASS_NAMES = ("normal", "bacterial", "viral", "pneumonia_unknown_subtype")


class ManifestEntry(BaseModel):
    """One training file: where it is, its bytes' sha256 and what it is labelled."""

    path: str = Field(description=(
        "Base data set: the path inside the data folder (`train/NORMAL/x.jpeg`); confirmed film: "
        "its storage key (`confirmed/{site}/{job}/film.jpg`)."))
    sha256: str
    source: Source
    site: str | None = Field(default=None, description="The confirming site; None for base files.")
    label: Literal["NORMAL", "PNEUMONIA"]
    subtype: Literal["bacterial", "viral"] | None = None
    patient: str = Field(description=(
        "The unit the splits never cut: the file-name patient for base files, a hash for "
        "confirmed films (no identifier is kept)."))
    confirmed_at: UTCDateTime | None = None

    @property
    def class_name(self) -> str:
        if self.label == "NORMAL":
            return "normal"
        return self.subtype or "pneumonia_unknown_subtype"


class DatasetManifest(BaseModel):
    """The exact file set of one training run; `fingerprint` names it."""

    format: int = MANIFEST_FORMAT
    fingerprint: str
    cutoff: UTCDateTime | None = Field(default=None, description=(
        "Confirmed films up to this instant were read; None: no confirmed films were read."))
    base_splits: list[str] = Field(default_factory=list)
    entries: list[ManifestEntry]
    counts: dict = Field(default_factory=dict)
    excluded: dict[str, int] = Field(default_factory=dict, description=(
        "Films left out, by reason (`acceptance_overlap`, `after_cutoff`)."))

    @classmethod
    def from_entries(cls, entries: Iterable[ManifestEntry], **fields) -> DatasetManifest:
        ordered = sorted(entries, key=lambda e: (e.source, e.path))
        return cls(entries=ordered, fingerprint=manifest_fingerprint(ordered),
                   counts=manifest_counts(ordered), **fields)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def read(cls, path: str | Path) -> DatasetManifest:
        """A manifest file; a changed entry list (the fingerprint no longer matches) is refused."""
        try:
            manifest = cls.model_validate_json(Path(path).read_bytes())
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: not a readable dataset manifest ({err})") from err
        actual = manifest_fingerprint(manifest.entries)
        if actual != manifest.fingerprint:
            raise DatasetError(f"{path}: its entries give fingerprint {actual}, not the "
                               f"recorded {manifest.fingerprint}; the manifest was changed")
        return manifest

    def mlflow_params(self) -> dict[str, str | int]:
        """Flat `dataset.*` params: fingerprint, cut-off and every count."""
        params: dict[str, str | int] = {
            "dataset.fingerprint": self.fingerprint,
            "dataset.cutoff": self.cutoff.isoformat() if self.cutoff else "none",
            "dataset.base_splits": ",".join(self.base_splits),
            "dataset.images": self.counts.get("images", 0),
        }
        for group in ("source", "site", "class"):
            for key, value in self.counts.get(group, {}).items():
                params[f"dataset.{group}.{key}"] = value
        for key, value in self.excluded.items():
            params[f"dataset.excluded.{key}"] = value
        return params

    def mlflow_tags(self) -> dict[str, str]:
        return {"dataset_fingerprint": self.fingerprint,
                "dataset_cutoff": self.cutoff.isoformat() if self.cutoff else "none"}


def manifest_fingerprint(entries: Sequence[ManifestEntry]) -> str:
    """sha256 over every entry's source, site, path, file sha256, label and subtype, sorted."""
    digest = hashlib.sha256(f"cxr-dataset-manifest/{MANIFEST_FORMAT}\n".encode())
    for line in sorted("\t".join((e.source, e.site or "", e.path, e.sha256, e.label,
                                  e.subtype or "")) for e in entries):
        digest.update(f"{line}\n".encode())
    return digest.hexdigest()


def manifest_counts(entries: Sequence[ManifestEntry]) -> dict:
    """Images in all; per source, per site (`base` for the base data set), per class; crossed."""
    def site_of(e: ManifestEntry) -> str:
        return e.site or BASE_SOURCE

    crossed = Counter(f"{e.source}/{site_of(e)}/{e.class_name}" for e in entries)
    return {
        "images": len(entries),
        "source": dict(sorted(Counter(e.source for e in entries).items())),
        "site": dict(sorted(Counter(site_of(e) for e in entries).items())),
        "class": {name: sum(e.class_name == name for e in entries) for name in CLASS_NAMES},
        "source_site_class": dict(sorted(crossed.items())),
    }


@dataclass
class TrainingData:
    """The records a run trains (and is gated) on, and the manifest that names them."""

    records: list[XrayRecord]
    manifest: DatasetManifest


# --- confirmed films ----------------------------------------------------------------------------


def confirmed_labels_until(storage: Storage, cutoff: datetime | None) -> tuple[list[ConfirmedFilm],
                                                                                int]:
    """Every site's confirmed films' labels, confirmed at or before `cutoff`; and how many were
    later (not read). `cutoff` None: none are read."""
    if cutoff is None:
        return [], 0
    labels = []
    for key in storage.list(CONFIRMED_PREFIX):
        if not key.endswith(f"/{CONFIRMED_LABEL_FILE}"):
            continue
        try:
            labels.append(ConfirmedFilm.model_validate_json(storage.get(key)))
        except ValueError as err:
            raise DatasetError(f"{key}: not a confirmed film's label ({err})") from err
    kept = [label for label in labels if label.confirmed_at <= cutoff]
    return sorted(kept, key=lambda label: label.film), len(labels) - len(kept)


def patient_unit(site: str, job_id: str, film: bytes, content_type: str | None) -> str:
    """A hash naming the film's patient (DICOM PatientID, else StudyInstanceUID, else the job)."""
    unit = f"job:{job_id}"
    if content_type == "application/dicom":
        try:
            header = dcmread(io.BytesIO(film), stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - an unreadable header only loses the grouping hint
            header = None
        if header is not None:
            if str(header.get("PatientID", "") or "").strip():
                unit = f"patient:{header.PatientID}"
            elif str(header.get("StudyInstanceUID", "") or "").strip():
                unit = f"study:{header.StudyInstanceUID}"
    digest = hashlib.sha256(f"{site}\n{unit}".encode()).hexdigest()[:16]
    return f"site-{site}-{digest}"


def _fetch_film(storage: Storage, key: str, folder: Path) -> tuple[Path, bytes]:
    """Copy one confirmed film into `folder`, under its storage key; its local path and bytes."""
    data = storage.get(key)
    local = folder / key
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    return local, data


def _record_of(entry: ManifestEntry, path: Path) -> XrayRecord:
    if entry.source == CONFIRMED_SOURCE:
        return XrayRecord(path=path, label=entry.label, subtype=entry.subtype,
                          patient=entry.patient, site=entry.site, key=entry.path)
    parts = entry.path.split("/")
    return XrayRecord(path=path, label=entry.label, subtype=entry.subtype, patient=entry.patient,
                      split=parts[0] if len(parts) == 3 else None)


def _confirmed(storage: Storage, label: ConfirmedFilm,
               folder: Path) -> tuple[XrayRecord, ManifestEntry]:
    path, data = _fetch_film(storage, label.film, folder)
    entry = ManifestEntry(
        path=label.film, sha256=hashlib.sha256(data).hexdigest(), source=CONFIRMED_SOURCE,
        site=label.site, label=label.label,
        subtype=label.subtype if label.label == "PNEUMONIA" else None,
        patient=patient_unit(label.site, label.job_id, data, label.content_type),
        confirmed_at=label.confirmed_at)
    return _record_of(entry, path), entry


# --- building and rebuilding --------------------------------------------------------------------


def _base_records(base_dir: Path, splits: Sequence[str]) -> list[XrayRecord]:
    has_splits = base_dir.is_dir() and any((base_dir / name).is_dir() for name in SPLITS)
    present = [s for s in splits if (base_dir / s).is_dir()]
    return scan_dataset(base_dir, present if has_splits else None, find_duplicates=False)


def _digests(records: Sequence[XrayRecord]) -> list[str]:
    return map_with_progress(lambda r: pixel_digest(read_pixels(r)), records, "hashing pixels")


def acceptance_digests(site_sets: Mapping[str, str]) -> set[str]:
    """The pixel digests of every film in every site's acceptance set."""
    digests: set[str] = set()
    for data in site_sets.values():
        digests.update(_digests(read_site_records(Path(data))))
    return digests


def collect_training_data(base_dir: str | Path, splits: Sequence[str], storage: Storage | None,
                          cutoff: datetime | None, work_dir: str | Path,
                          site_sets: Mapping[str, str] | None = None) -> TrainingData:
    """The base data set plus the confirmed films up to `cutoff`, less the acceptance films.

    Confirmed films are copied under `work_dir`; `storage` None or `cutoff` None reads none.
    """
    base_dir, work_dir = Path(base_dir), Path(work_dir)
    records = _base_records(base_dir, splits)
    entries = {id(r): ManifestEntry(
        path=r.relative_path, sha256=hashlib.sha256(r.path.read_bytes()).hexdigest(),
        source=BASE_SOURCE, label=r.label, subtype=r.subtype, patient=r.patient)
        for r in records}
    later = 0
    if storage is not None and cutoff is not None:
        labels, later = confirmed_labels_until(storage, cutoff)
        for label in labels:
            record, entry = _confirmed(storage, label, work_dir)
            records.append(record)
            entries[id(record)] = entry
    digests = _digests(records)
    # Only confirmed films can be a site's acceptance films; the sets are read only when needed.
    has_confirmed = any(r.site is not None for r in records)
    held_out = acceptance_digests(site_sets or {}) if has_confirmed else set()
    kept = [(r, d) for r, d in zip(records, digests, strict=True)
            if r.site is None or d not in held_out]
    excluded = {"acceptance_overlap": len(records) - len(kept), "after_cutoff": later}
    if excluded["acceptance_overlap"]:
        log.info("dataset: %d confirmed film(s) left out: their pixels are in a site's "
                 "acceptance set", excluded["acceptance_overlap"])
    if not kept:
        raise DatasetError(f"no training images left under {base_dir} and the confirmed films")
    kept.sort(key=lambda pair: pair[0].relative_path)
    final = [r for r, _ in kept]
    assign_duplicate_groups(final, [d for _, d in kept])
    manifest = DatasetManifest.from_entries(
        (entries[id(r)] for r in final), cutoff=cutoff if storage is not None else None,
        base_splits=list(splits), excluded=excluded)
    log.info("dataset %s: %s", manifest.fingerprint[:12], json.dumps(manifest.counts["source"]))
    return TrainingData(final, manifest)


def rebuild_training_data(manifest: DatasetManifest, base_dir: str | Path,
                          storage: Storage | None, work_dir: str | Path) -> TrainingData:
    """Exactly the manifest's file set, from the base folder and storage; every sha256 checked."""
    base_dir, work_dir = Path(base_dir), Path(work_dir)
    records: list[XrayRecord] = []
    problems: list[str] = []
    for entry in manifest.entries:
        if entry.source == CONFIRMED_SOURCE and storage is None:
            raise DatasetError("the manifest lists confirmed films; a storage to read them from "
                               "is needed")
        try:
            if entry.source == BASE_SOURCE:
                path = base_dir / entry.path
                data = path.read_bytes()
            else:
                assert storage is not None
                path, data = _fetch_film(storage, entry.path, work_dir)
        except (OSError, CXRError) as err:
            problems.append(f"{entry.path}: cannot be read ({err})")
            continue
        sha = hashlib.sha256(data).hexdigest()
        if sha != entry.sha256:
            problems.append(f"{entry.path}: sha256 {sha}, the manifest says {entry.sha256}")
            continue
        records.append(_record_of(entry, path))
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DatasetError(f"{len(problems)} file(s) of manifest {manifest.fingerprint[:12]} "
                           f"cannot be rebuilt: {shown}{more}")
    records.sort(key=lambda r: r.relative_path)
    assign_duplicate_groups(records)
    return TrainingData(records, manifest)


def parse_cutoff(text: str) -> datetime:
    """An ISO 8601 instant (`2026-12-01`, `2026-12-01T03:00:00+01:00`); no offset means UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise DatasetError(f"cut-off {text!r} is not an ISO 8601 date or time") from err
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
