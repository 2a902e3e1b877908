"""One received DICOM instance -> checked, de-identified, screened, stored, recorded and queued.

Used by the C-STORE SCP (`services.pacs`) and by STOW-RS on the gateway. The encoded bytes are
checked against the DICOM limits (`shared.imaging.dicom_scan`) before pydicom parses them.

The job id is derived from the sender (route and client or calling AE title) and the SOP Instance
UID, so one sender's instance never stands in for another's. The same sender sending the same
image again under the same UID makes no second job (a duplicate, stored already); a different
image under a UID that sender already used is refused as a conflict. The original
Study/Series/SOP Instance UIDs and the route stay in the job record (`extra.dicom`), so results
can be sent back to the PACS that knows the instance by them, and only for a sender allowed to.
With re-identification keys configured (`reid`), the instance's patient and study identifiers are
kept apart, encrypted, for the same purpose (`shared.reidentification`, recorded by `submit_job`).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from shared.audit import audited
from shared.contract import DEFAULT_SITE
from shared.dicom_intake.deidentify import deidentify
from shared.errors import CorruptImageError, CXRError, InvalidDicomError, JobExistsError
from shared.imaging import DecodedImage, DecodeLimits, decode_xray
from shared.imaging.dicom import check_pixel_encoding
from shared.imaging.dicom_scan import check_file
from shared.imaging.header_hints import header_reasons
from shared.jobs.intake import Enqueuer, submit_job
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.reidentification import ReidentificationKeys
from shared.scope import SCOPE_HINTS_KEY, check_refusal, ordered
from shared.storage import Storage

log = logging.getLogger("cxr.dicom")
C_STORE, STOW_RS = "c-store", "stow-rs"  # the routes an instance comes by
ROUTES = (C_STORE, STOW_RS)
UID_KEYWORDS = {"study_instance_uid": "StudyInstanceUID",
                "series_instance_uid": "SeriesInstanceUID",
                "sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID"}


class Disposition(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"  # this sender sent this image under this UID before: one job
    CONFLICT = "conflict"  # this sender used this UID for a different image before: refused


@dataclass(frozen=True)
class Received:
    disposition: Disposition
    job_id: str | None
    sop_class_uid: str
    sop_instance_uid: str
    reason: str | None = None


@dataclass(frozen=True)
class DicomIntake:
    """Everything a received instance needs to become a job."""

    storage: Storage
    jobs: JobStore
    queue: Enqueuer
    limits: DecodeLimits
    keep_identifiers: bool = False
    # The site a sender belongs to (the caller's AE title or API client); None: every job `default`.
    site_of: Callable[[str], str] | None = None
    # True: a film with a refusing scope reason raises the refusal here (STOW-RS answers it at
    # once); False: it is queued and refused by the worker, which tells the PACS (C-STORE).
    refuse_out_of_scope: bool = False
    # Where the original identifiers are kept for the reports sent back; None: not kept.
    reid: ReidentificationKeys | None = None

    def receive(self, dataset: Dataset, *, client: str, route: str) -> Received:
        """Turn `dataset` into a job; image errors (`ImageError`) propagate to the caller."""
        with audited(client, "dicom_store") as entry:
            entry.extra["route"] = route
            uids = original_uids(dataset)
            entry.extra["sop_instance_uid"] = uids["sop_instance_uid"]
            # Read before de-identification, which drops some of them (Patient's Age).
            hints = header_reasons(dataset)
            job_id = entry.job_id = instance_job_id(uids["sop_instance_uid"], client, route)
            data = self._stored_copy(dataset)
            decoded = decode_xray(data, self.limits)
            reasons = ordered([*hints, *decoded.scope_reasons])
            if reasons:
                entry.extra["scope"] = list(reasons)
            if self.refuse_out_of_scope:
                check_refusal(reasons)
            digest = pixel_digest(decoded)
            extra: dict[str, object] = {"dicom": {**uids, "calling_ae_title": client,
                                                  "route": route, "pixel_sha256": digest}}
            if hints:
                extra[SCOPE_HINTS_KEY] = list(hints)
            try:
                submit_job(self.storage, self.jobs, self.queue, job_id=job_id, client=client,
                           data=data, filename=None, decoded=decoded, source="dicom",
                           extra=extra,
                           site=self.site_of(client) if self.site_of else DEFAULT_SITE,
                           reid=self.reid, original=dataset)
            except JobExistsError:
                existing = self.jobs.get(job_id)
                known = existing.extra.get("dicom", {}).get("pixel_sha256") if existing else None
                same = known == digest
                entry.extra["duplicate" if same else "conflict"] = True
                entry.status = 200 if same else 409
                if not same:
                    # The job id names the instance; the UID itself stays out of the log.
                    log.warning("job %s from %s refused: the sender stored a different image "
                                "under this SOP Instance UID before", job_id, client)
                return Received(Disposition.DUPLICATE if same else Disposition.CONFLICT, job_id,
                                uids["sop_class_uid"], uids["sop_instance_uid"],
                                None if same else "sop_instance_uid_conflict")
            entry.status = 202
            return Received(Disposition.QUEUED, job_id, uids["sop_class_uid"],
                            uids["sop_instance_uid"])

    def _stored_copy(self, dataset: Dataset) -> bytes:
        """The instance as stored (de-identified unless configured otherwise), as a Part 10 file.

        A dataset pydicom cannot walk or write (values that do not parse, pixel data that does
        not match the transfer syntax) is a defect of the instance: `ImageError`, never a
        transient failure.
        """
        check_pixel_encoding(dataset)
        try:
            stored = dataset if self.keep_identifiers else deidentify(dataset)
            return encode(stored)
        except CXRError:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom parses lazily: any error type
            log.info("instance cannot be re-encoded: %s: %s", type(exc).__name__, exc)
            raise CorruptImageError(
                "The DICOM instance cannot be read in full (an element's value does not match "
                "its type, or the pixel data does not match the transfer syntax); export it "
                "again.") from exc


def read_instance(data: bytes, limits: DecodeLimits) -> Dataset:
    """Parse a received Part 10 file after checking it against the DICOM limits.

    Raises an `ImageError` when the bytes are over a limit or not readable DICOM.
    """
    limits.check_bytes(len(data))
    check_file(data, limits)
    try:
        dataset = dcmread(io.BytesIO(data), force=True)
        dataset.SOPInstanceUID  # noqa: B018 - parsing is lazy; touch what we need
    except Exception as exc:  # noqa: BLE001 - any parse failure means "cannot understand"
        log.info("received bytes are not readable DICOM: %s: %s", type(exc).__name__, exc)
        raise CorruptImageError("The part is not a readable DICOM instance.") from exc
    return dataset


def pixel_digest(decoded: DecodedImage) -> str:
    """What tells two images apart whatever their encoding: the decoded pixels and their shape."""
    digest = hashlib.sha256(str(decoded.pixels.shape).encode())
    digest.update(decoded.pixels.tobytes())
    return digest.hexdigest()


def original_uids(dataset: Dataset) -> dict[str, str]:
    missing = [keyword for keyword in UID_KEYWORDS.values() if not dataset.get(keyword)]
    if missing:
        raise InvalidDicomError(f"The DICOM instance lacks {', '.join(missing)}.")
    return {name: str(dataset[keyword].value) for name, keyword in UID_KEYWORDS.items()}


def instance_job_id(sop_instance_uid: str, client: str, route: str) -> str:
    """The job of `client`'s instance over `route` (`c-store`: client is the calling AE title)."""
    sender = f"{route}\n{client}\n{sop_instance_uid}"
    return "dicom-" + hashlib.sha256(sender.encode()).hexdigest()[:40]


def intake_route(record: JobRecord) -> str | None:
    """How a DICOM job's instance came (`c-store` or `stow-rs`); None for any other job.

    Read from `extra.dicom.route`; a job recorded before the route was kept is told by its id,
    which names route, sender and SOP Instance UID (`instance_job_id`).
    """
    dicom = record.extra.get("dicom") if record.source == "dicom" else None
    if not isinstance(dicom, dict):
        return None
    route = dicom.get("route")
    if route in ROUTES:
        return str(route)
    sender, uid = dicom.get("calling_ae_title"), dicom.get("sop_instance_uid")
    if not (isinstance(sender, str) and isinstance(uid, str)):
        return None
    return next((name for name in ROUTES if instance_job_id(uid, sender, name) == record.job_id),
                None)


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
