"""One received DICOM instance -> de-identified, screened, stored, recorded and queued.

Used by the C-STORE SCP (`services.pacs`) and by STOW-RS on the gateway. The job id is derived
from the SOP Instance UID, so the same instance sent twice (by any route) makes one job. The
original Study/Series/SOP Instance UIDs stay in the job record (`extra.dicom`), so results can be
sent back to the PACS that knows the instance by them.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from enum import StrEnum

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from shared.audit import audited
from shared.dicom_intake.deidentify import deidentify
from shared.errors import InvalidDicomError, JobExistsError
from shared.imaging import DecodeLimits, decode_xray
from shared.imaging.header_hints import header_reasons
from shared.intake import Enqueuer, submit_job
from shared.jobs import JobStore
from shared.scope import SCOPE_HINTS_KEY, check_refusal, ordered
from shared.storage import Storage

log = logging.getLogger("cxr.dicom")
UID_KEYWORDS = {"study_instance_uid": "StudyInstanceUID",
                "series_instance_uid": "SeriesInstanceUID",
                "sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID"}


class Disposition(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Received:
    disposition: Disposition
    job_id: str | None
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class DicomIntake:
    """Everything a received instance needs to become a job."""

    storage: Storage
    jobs: JobStore
    queue: Enqueuer
    limits: DecodeLimits
    keep_identifiers: bool = False
    # True: a film with a refusing scope reason raises the refusal here (STOW-RS answers it at
    # once); False: it is queued and refused by the worker, which tells the PACS (C-STORE).
    refuse_out_of_scope: bool = False

    def receive(self, dataset: Dataset, *, client: str, route: str) -> Received:
        """Turn `dataset` into a job; image errors (`ImageError`) propagate to the caller."""
        with audited(client, "dicom_store") as entry:
            entry.extra["route"] = route
            uids = original_uids(dataset)
            entry.extra["sop_instance_uid"] = uids["sop_instance_uid"]
            # Read before de-identification, which drops some of them (Patient's Age).
            hints = header_reasons(dataset)
            stored = dataset if self.keep_identifiers else deidentify(dataset)
            data = encode(stored)
            decoded = decode_xray(data, self.limits)
            reasons = ordered([*hints, *decoded.scope_reasons])
            if reasons:
                entry.extra["scope"] = list(reasons)
            if self.refuse_out_of_scope:
                check_refusal(reasons)
            job_id = entry.job_id = instance_job_id(uids["sop_instance_uid"])
            extra: dict[str, object] = {"dicom": {**uids, "calling_ae_title": client}}
            if hints:
                extra[SCOPE_HINTS_KEY] = list(hints)
            try:
                submit_job(self.storage, self.jobs, self.queue, job_id=job_id, client=client,
                           data=data, filename=None, decoded=decoded, source="dicom",
                           extra=extra)
            except JobExistsError:
                entry.extra["duplicate"] = True
                return Received(Disposition.DUPLICATE, job_id, uids["sop_class_uid"],
                                uids["sop_instance_uid"])
            entry.status = 202
            return Received(Disposition.QUEUED, job_id, uids["sop_class_uid"],
                            uids["sop_instance_uid"])


def original_uids(dataset: Dataset) -> dict[str, str]:
    missing = [keyword for keyword in UID_KEYWORDS.values() if not dataset.get(keyword)]
    if missing:
        raise InvalidDicomError(f"The DICOM instance lacks {', '.join(missing)}.")
    return {name: str(dataset[keyword].value) for name, keyword in UID_KEYWORDS.items()}


def instance_job_id(sop_instance_uid: str) -> str:
    return "dicom-" + hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:40]


def encode(dataset: Dataset) -> bytes:
    """The instance as a DICOM file (Part 10), keeping its transfer syntax when it has one."""
    file_meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    file_meta = FileMetaDataset(file_meta)
    file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if "TransferSyntaxUID" not in file_meta:
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = file_meta
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
