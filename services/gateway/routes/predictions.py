"""Uploads (`POST /v1/predictions`), the client's job list, job status with long polling, the
heatmap image, and deleting a job with everything kept about it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, File, Header, Path, Query, Request, Response, UploadFile
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from services.gateway.api_models import JobList, JobView
from services.gateway.deps import ClientDep, ResourcesDep
from services.gateway.errors import HeatmapNotReadyError, TooManyFilesError
from services.gateway.fhir import FHIR_MEDIA_TYPE, report_json
from services.gateway.problems import problem_responses
from services.gateway.resources import GatewayResources
from shared.audit import AuditEntry, audited
from shared.dicom_intake.screening import screen_upload
from shared.errors import ImageError, JobNotFinishedError, JobNotFoundError
from shared.feedback import confirm
from shared.heatmap import film_png, heatmap_png
from shared.imaging import decode_xray
from shared.jobs.intake import new_job_id, submit_job
from shared.jobs.keys import INDEX_ENTRY_PATTERN
from shared.jobs.records import JOB_ID_PATTERN, JobRecord, JobStatus
from shared.retention import erase_job
from shared.schemas import ReaderFeedback
from shared.shadow import read_shadow
from shared.upload_privacy import stored_upload

log = logging.getLogger("cxr.gateway")
router = APIRouter(prefix="/v1/predictions", tags=["predictions"])

JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN,
                                description="The id returned by the upload.")]
POLL_INTERVAL_S = 0.2
NO_STORE = {"Cache-Control": "no-store"}


async def _owned_job(resources: GatewayResources, job_id: str, client: str) -> JobRecord:
    """The job if it exists AND belongs to `client`; another client's job is simply not found."""
    record = await run_in_threadpool(resources.jobs.get, job_id)
    if record is None or record.client_id != client:
        raise JobNotFoundError()
    return record


WAIT_DESCRIPTION = ("Seconds to wait for the job to finish before answering "
                    "(capped by the server's CXR_MAX_WAIT_SECONDS).")


def _view(response: Response, record: JobRecord) -> JobView:
    response.headers["Location"] = f"/v1/predictions/{record.job_id}"
    response.headers.update(NO_STORE)
    if record.status.finished:
        response.status_code = 200
    return JobView.from_record(record)


@router.post(
    "", status_code=202, response_model=JobView, summary="Upload an X-ray for prediction",
    responses={200: {"model": JobView,
                     "description": "With `wait`: the job finished in time; its result or failure"},
               **problem_responses(400, 401, 408, 409, 413, 415, 422, 429, 503)},
)
async def create_prediction(
    request: Request,
    response: Response,
    resources: ResourcesDep,
    client: ClientDep,
    file: Annotated[UploadFile, File(description="The chest X-ray: JPEG, PNG or DICOM.")],
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key",
        description="Repeat a request safely: the same key and bytes give the same job.")] = None,
    wait: Annotated[float, Query(ge=0, le=3600, description=WAIT_DESCRIPTION)] = 0,
) -> JobView:
    """Validate the image, store it, record the job and queue it: 202, then poll `Location`.

    With `wait`, the answer comes once the job has finished (200 with the result, one request
    instead of two) or when the wait is over (202, the job still running: poll `Location`).
    """
    with audited(client, "upload") as entry:
        entry.status = 202
        record = await _accept_upload(request, resources, client, file, idempotency_key, entry)
        wait_s = min(wait, resources.settings.max_wait_seconds)
        if not record.status.finished and wait_s > 0:
            record = await _wait_until_finished(request, resources, record, wait_s)
        if record.status.finished:
            entry.status = 200
        return _view(response, record)


async def _accept_upload(request: Request, resources: GatewayResources, client: str,
                         file: UploadFile, idempotency_key: str | None,
                         entry: AuditEntry) -> JobRecord:
    """The job for this upload: a new one, or the one an earlier request with the key made."""
    files = (await request.form()).getlist("file")  # the form FastAPI already parsed
    if len(files) > 1:  # FastAPI would silently take one of them
        raise TooManyFilesError(len(files))
    data = await file.read()
    digest = hashlib.sha256(data).hexdigest()
    idem = resources.idempotency
    if idempotency_key is not None:
        idem.validate(idempotency_key)
        replayed = await idem.existing(client, idempotency_key, digest)
        if replayed is not None:
            entry.job_id = replayed
            entry.extra["replay"] = True
            # the first request with this key may still be creating the job's record
            return await _wait_for_record(resources, replayed, client)
    try:
        decoded = await run_in_threadpool(decode_xray, data, resources.limits)
        screen_upload(decoded)
        # What is stored: DICOM de-identified (as over C-STORE and STOW-RS).
        stored, decoded = await run_in_threadpool(stored_upload, data, decoded)
    except ImageError as exc:
        resources.metrics.uploads_refused.labels(exc.code).inc()
        resources.metrics.count_scope_refusal(exc)
        raise
    job_id = new_job_id()
    if idempotency_key is not None:
        claim = await idem.claim(client, idempotency_key, digest, job_id)
        if not claim.is_new:  # a concurrent request with the same key won the race
            entry.job_id = claim.job_id
            return await _wait_for_record(resources, claim.job_id, client)
    entry.job_id = job_id
    try:
        record = await run_in_threadpool(
            lambda: submit_job(resources.storage, resources.jobs, resources.queue,
                               job_id=job_id, client=client, data=stored,
                               filename=file.filename, decoded=decoded,
                               site=resources.settings.site_of_client(client),
                               reid=resources.reid,
                               original=data if decoded.format == "dicom" else None))
    except Exception:
        if idempotency_key is not None:
            await idem.release(client, idempotency_key)
        raise
    resources.metrics.jobs_created.inc()
    resources.metrics.upload_bytes.observe(len(data))
    return record


async def _wait_for_record(resources: GatewayResources, job_id: str, client: str,
                           timeout_s: float = 10.0) -> JobRecord:
    """The record another request is still creating under the same idempotency key."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await _owned_job(resources, job_id, client)
        except JobNotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(POLL_INTERVAL_S)


def _iso_8601_only(value: object) -> object:
    """A query time must be written as ISO 8601, the documented format: pydantic would also read
    a bare number as seconds since 1970, which no client means by it."""
    if isinstance(value, str) and not ISO_8601_DATE.match(value):
        raise ValueError("expected an ISO 8601 time, e.g. 2026-01-31T08:00:00Z")
    return value


ISO_8601_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
QueryTime = Annotated[datetime, BeforeValidator(_iso_8601_only)]


def _as_utc(moment: datetime | None) -> datetime | None:
    """A time given without a zone is read as UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@router.get(
    "", response_model=JobList, summary="List your prediction jobs, newest first",
    responses=problem_responses(401, 422, 429, 503),
)
async def list_predictions(
    response: Response,
    resources: ResourcesDep,
    client: ClientDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[str | None, Query(
        pattern=INDEX_ENTRY_PATTERN, max_length=160,
        description="`next_cursor` of the previous page; leave out for the newest jobs.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    created_after: Annotated[QueryTime | None, Query(description=(
        "Only jobs created at or after this time (ISO 8601; without a zone: UTC)."))] = None,
    created_before: Annotated[QueryTime | None, Query(description=(
        "Only jobs created before this time (ISO 8601; without a zone: UTC)."))] = None,
) -> JobList:
    """The calling client's own jobs, newest first, `limit` at a time: follow `next_cursor` for
    older pages. Other clients' jobs never appear; deleted and purged jobs are gone from it."""
    with audited(client, "list_jobs"):
        page = await run_in_threadpool(
            lambda: resources.jobs.list_for_client(
                client, limit=limit, cursor=cursor, status=status,
                created_after=_as_utc(created_after), created_before=_as_utc(created_before)))
        response.headers.update(NO_STORE)
        return JobList(items=[JobView.from_record(record) for record in page.records],
                       next_cursor=page.next_cursor)


@router.get(
    "/{job_id}", response_model=JobView, summary="A prediction job's status and result",
    responses=problem_responses(401, 404, 422, 429, 503),
)
async def get_prediction(
    request: Request,
    response: Response,
    resources: ResourcesDep,
    client: ClientDep,
    job_id: JobIdPath,
    wait: Annotated[float, Query(ge=0, le=3600, description=WAIT_DESCRIPTION)] = 0,
) -> JobView:
    """The job's state; with `wait`, answers as soon as it finishes or when the wait is over."""
    with audited(client, "read_result", job_id):
        record = await _owned_job(resources, job_id, client)
        wait_s = min(wait, resources.settings.max_wait_seconds)
        if not record.status.finished and wait_s > 0:
            record = await _wait_until_finished(request, resources, record, wait_s)
        response.headers.update(NO_STORE)
        return JobView.from_record(record)


async def _wait_until_finished(request: Request, resources: GatewayResources, record: JobRecord,
                               wait_s: float) -> JobRecord:
    """The record once the job has finished, or as it is after `wait_s` seconds.

    Woken by the job's "finished" notice (`shared.jobs.keys.finished_channel`, heard by the
    process's one listener, `services.gateway.notices`), re-reading the record at least every
    `CXR_WAIT_POLL_SECONDS` in case a notice is lost, and every 0.2 s while nothing listens.
    """
    deadline = time.monotonic() + wait_s
    poll_s = resources.settings.wait_poll_seconds
    notices = resources.notices
    with notices.watch(record.job_id) as finished:
        # Read again once registered: a job that finished in between has no notice left to send.
        record = await _owned_job(resources, record.job_id, record.client_id)
        while not record.status.finished and (left := deadline - time.monotonic()) > 0:
            if await request.is_disconnected():
                break
            interval = poll_s if notices.listening else POLL_INTERVAL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=min(interval, left))
            finished.clear()
            record = await _owned_job(resources, record.job_id, record.client_id)
    return record


@router.get(
    "/{job_id}/heatmap", summary="The Grad-CAM heatmap over the X-ray (PNG)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG image"},
               **problem_responses(401, 404, 422, 429, 503)},
)
async def get_heatmap(resources: ResourcesDep, client: ClientDep, job_id: JobIdPath) -> Response:
    """The heatmap PNG; 404 `heatmap_not_ready` until the job has succeeded.

    The first read draws it from the upload and the stored Grad-CAM map and keeps it.
    """
    with audited(client, "read_heatmap", job_id):
        record = await _owned_job(resources, job_id, client)
        if record.status != JobStatus.SUCCEEDED or not record.heatmap_key:
            raise HeatmapNotReadyError()
        png = await run_in_threadpool(heatmap_png, resources.storage, record, resources.limits,
                                      resources.settings.heatmap_max_side)
        return Response(png, media_type="image/png", headers=NO_STORE)


@router.get(
    "/{job_id}/original", summary="The uploaded X-ray as a PNG (DICOM included)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG image"},
               **problem_responses(401, 404, 422, 429, 503)},
)
async def get_original(resources: ResourcesDep, client: ClientDep, job_id: JobIdPath) -> Response:
    """The film as stored (a DICOM de-identified, a JPEG or PNG without its metadata), drawn as
    a grey PNG no larger than the heatmap, for browsers that cannot show DICOM."""
    with audited(client, "read_original", job_id):
        record = await _owned_job(resources, job_id, client)
        upload = await run_in_threadpool(resources.storage.get, record.upload_key)
        png = await run_in_threadpool(film_png, upload, resources.limits,
                                      resources.settings.heatmap_max_side)
        return Response(png, media_type="image/png", headers=NO_STORE)


FHIR_NOT_FINISHED = ("The job is still queued or running: its FHIR report exists once it has "
                     "finished (GET the job with ?wait= to know when).")


@router.get(
    "/{job_id}/fhir", summary="The job's result as a FHIR R4 / R4B DiagnosticReport",
    response_class=Response,
    responses={200: {"content": {FHIR_MEDIA_TYPE: {"schema": {"type": "object"}}},
                     "description": (
                         "A FHIR DiagnosticReport (JSON) with the model's reading as a contained "
                         "Observation: `preliminary`; `final` or `amended` once a reader "
                         "confirmed or corrected it; `cancelled` for a failed or refused film")},
               **problem_responses(401, 404, 409, 422, 429, 503)},
)
async def get_fhir_report(resources: ResourcesDep, client: ClientDep,
                          job_id: JobIdPath) -> Response:
    """The finished job as a FHIR `DiagnosticReport` (`application/fhir+json`), built and
    validated with `fhir.resources` R4B (the resources used read the same in R4).

    The model's reading is a contained `Observation`: SNOMED CT Pneumonia or Normal, with
    components for the probability, the threshold, the operating point, the subtype and the
    scope statement; `method` and `device` name the model version. A reader's verdict adds a
    second Observation and makes the report `final` (confirmed) or `amended` (corrected). A
    failed job, a refused film included, is `cancelled` with the reason in `conclusion`. The
    report names no patient: its `identifier` is the job id. 409 `job_not_finished` while the
    job runs; 404 for an unknown job or another client's.
    """
    with audited(client, "read_fhir", job_id):
        record = await _owned_job(resources, job_id, client)
        if not record.status.finished:
            raise JobNotFinishedError(FHIR_NOT_FINISHED)
        body = await run_in_threadpool(report_json, record)
        return Response(body, media_type=FHIR_MEDIA_TYPE, headers=NO_STORE)


@router.delete(
    "/{job_id}", status_code=204, response_class=Response,
    summary="Delete a job: its upload, result, heatmap and record",
    responses={204: {"description": "Deleted: nothing of the job is kept any more"},
               **problem_responses(401, 404, 409, 422, 429, 503)},
)
async def delete_prediction(resources: ResourcesDep, client: ClientDep,
                            job_id: JobIdPath) -> Response:
    """Remove the job's upload, result, heatmap (overlay and Grad-CAM map), re-identification
    key and record, from storage and Redis: 204.

    A job that is unknown, not yours, or already deleted answers 404 `job_not_found`, so
    repeating a DELETE changes nothing (the second answers 404). A job still queued or running
    answers 409 `job_not_finished`: delete it once it has finished.
    """
    with audited(client, "delete", job_id) as entry:
        record = await _owned_job(resources, job_id, client)
        if not record.status.finished:
            raise JobNotFinishedError()
        await run_in_threadpool(erase_job, resources.storage, resources.jobs, job_id,
                                reid=resources.reid, record=record)
        entry.status = 204
        return Response(status_code=204)

async def _count_shadow_feedback(resources: GatewayResources, record: JobRecord,
                                 reader_label: str, replaced_label: str | None) -> None:
    """The verdict against the shadow version's label, when one scored the film; the verdict is
    recorded already, so a storage failure here is only logged."""
    try:
        shadow = await run_in_threadpool(read_shadow, resources.storage, record.job_id)
    except Exception:
        log.exception("could not read the shadow output of job %s", record.job_id)
        return
    if shadow is not None:
        resources.metrics.count_shadow_feedback(record.site, shadow.shadow.model.version,
                                                shadow.shadow.label, reader_label,
                                                replaced_label)


@router.post(
    "/{job_id}/feedback", status_code=201, response_model=JobView,
    summary="Confirm or correct a prediction (a reader's verdict)",
    responses=problem_responses(400, 401, 404, 409, 422, 429, 503),
)
async def give_feedback(response: Response, resources: ResourcesDep, client: ClientDep,
                        job_id: JobIdPath, verdict: ReaderFeedback) -> JobView:
    """Record a reader's label for a succeeded job: 201 with the job, its `feedback` set.

    The film becomes labelled training data of the job's site (stored de-identified with the
    label, the reader and the model's answer). A second feedback replaces the first; the audit
    trail keeps both. 409 `job_not_finished` while the job runs, `job_has_no_result` once it
    failed; 404 for a job of another client. The comment is kept on the job, never logged.
    """
    with audited(client, "feedback", job_id) as entry:
        entry.status = 201
        await _owned_job(resources, job_id, client)
        confirmation = await run_in_threadpool(confirm, resources.storage, resources.jobs,
                                               job_id, verdict, client)
        record, feedback = confirmation.record, confirmation.feedback
        assert record.result is not None
        replaced = confirmation.replaced
        entry.extra.update({
            "label": feedback.label, "subtype": feedback.subtype, "reader": feedback.reader,
            "revision": feedback.revision, "model_label": record.result.label,
            "model_version": record.result.model.version, "site": record.site,
            "replaces": replaced.label if replaced else None})
        resources.metrics.count_feedback(record.site, record.result.model.version,
                                         record.result.label, feedback.label,
                                         replaced.label if replaced else None)
        await _count_shadow_feedback(resources, record, feedback.label,
                                     replaced.label if replaced else None)
        response.headers["Location"] = f"/v1/predictions/{job_id}"
        response.headers.update(NO_STORE)
        return JobView.from_record(record)
