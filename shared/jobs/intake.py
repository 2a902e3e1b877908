"""Turning a validated image into a stored, recorded and queued job (in that order).

The one path from "bytes arrived" to "the worker will predict": HTTP uploads, DICOM C-STORE and
DICOMweb STOW-RS all call `submit_job`, which is also where a DICOM job's re-identification key is
recorded (`shared.reidentification`), from the instance as it arrived.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Literal, Protocol

from shared.contract import DEFAULT_SITE
from shared.errors import CXRError
from shared.imaging import DecodedImage
from shared.jobs.keys import upload_key
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.schemas import Failure
from shared.storage import Storage

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from shared.reidentification import ReidentificationKeys

MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "dicom": "application/dicom"}
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


class Enqueuer(Protocol):
    def enqueue(self, job_id: str) -> None: ...


def new_job_id() -> str:
    return uuid.uuid4().hex


def display_name(filename: str | None) -> str | None:
    """The client's file name, kept only for display: last path part, printable, bounded."""
    if not filename:
        return None
    name = _UNPRINTABLE.sub("", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:255] or None


def image_facts(decoded: DecodedImage) -> dict[str, object]:
    """The decoded image's plain metadata (size, bit depth, DICOM UIDs) for the job record."""
    facts: dict[str, object] = {"format": decoded.format}
    for key, value in decoded.metadata.items():
        if isinstance(value, str | int | float | bool):
            facts[key] = value
    return facts


def submit_job(storage: Storage, jobs: JobStore, queue: Enqueuer, *, job_id: str, client: str,
               data: bytes, filename: str | None, decoded: DecodedImage,
               source: Literal["api", "dicom"] = "api",
               extra: dict[str, object] | None = None,
               site: str = DEFAULT_SITE,
               reid: ReidentificationKeys | None = None,
               original: Dataset | bytes | None = None) -> JobRecord:
    """Store the bytes, write the record, then queue; blocking, so run it in a worker thread.

    With `reid` (re-identification keys configured) and `original` (the DICOM instance as it
    arrived, before de-identification), the job's re-identification key is written beside the
    upload, once the job id is claimed (a duplicate never overwrites the key of the job it
    duplicates) and before the record, so a job that exists has its key.

    The blob and the record exist before the task is sent, so a worker never sees an unknown job
    and a job whose task was lost can be re-queued from storage. JobExistsError if `job_id` is
    taken (callers with deterministic ids use it for idempotency): `JobStore.create` checks Redis
    and storage before it writes anything.
    """
    stored_key = upload_key(job_id)
    media_type = MEDIA_TYPES.get(decoded.format, "application/octet-stream")
    record = JobRecord(job_id=job_id, client_id=client, filename=display_name(filename),
                       content_type=media_type, size_bytes=len(data), upload_key=stored_key,
                       source=source, site=site,
                       extra={**image_facts(decoded), **(extra or {})})
    # The upload is written beside the open-jobs marker, both before the record (one fsync wait
    # less than one after the other).
    def alongside() -> None:
        storage.put(stored_key, data, content_type=media_type)
        if reid is not None and original is not None:
            reid.record(job_id, original)

    jobs.create(record, alongside=alongside)
    try:
        queue.enqueue(job_id)
    except CXRError as exc:
        jobs.mark_failed(job_id, Failure(code=exc.code, message=exc.message))
        raise
    return record
