"""Turning a validated upload into a stored, recorded and queued job (in that order)."""

from __future__ import annotations

import re
import uuid

from services.gateway.errors import QueueUnavailableError
from services.gateway.resources import GatewayResources
from shared.imaging import DecodedImage
from shared.schemas import Failure, JobRecord

MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "dicom": "application/dicom"}
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


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


def create_job(resources: GatewayResources, *, job_id: str, client: str, data: bytes,
               filename: str | None, decoded: DecodedImage) -> JobRecord:
    """Store the bytes, write the record, then queue; blocking, so run it in a worker thread.

    The blob and the record exist before the task is sent, so a worker never sees an unknown job
    and a job whose task was lost can be re-queued from storage.
    """
    upload_key = f"uploads/{job_id}"
    media_type = MEDIA_TYPES.get(decoded.format, "application/octet-stream")
    resources.storage.put(upload_key, data, content_type=media_type)
    record = JobRecord(job_id=job_id, client_id=client, filename=display_name(filename),
                       content_type=media_type, size_bytes=len(data), upload_key=upload_key,
                       source="api", extra=image_facts(decoded))
    resources.jobs.create(record)
    try:
        resources.queue.enqueue(job_id)
    except QueueUnavailableError as exc:
        resources.jobs.mark_failed(job_id, Failure(code=exc.code, message=exc.message))
        raise
    return record
