"""DICOMweb STOW-RS: `POST /dicomweb/studies`; each instance becomes a job as over C-STORE."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import redis
from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import ClientDep, ResourcesDep
from services.gateway.problems import problem_responses
from services.gateway.resources import GatewayResources
from services.gateway.stow import UID_PATTERN, StowResponse, dicom_parts
from shared.dicom_intake.receive import STOW_RS, DicomIntake, Disposition, read_instance
from shared.dicom_intake.screening import ACCEPTED_SOP_CLASSES
from shared.dicom_intake.status import (
    CANNOT_UNDERSTAND,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
    STUDY_MISMATCH,
)
from shared.errors import CXRError, ImageError, NotChestRadiographError

log = logging.getLogger("cxr.gateway")
router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])


def _intake(resources: GatewayResources) -> DicomIntake:
    return DicomIntake(storage=resources.storage, jobs=resources.jobs, queue=resources.queue,
                       limits=resources.limits,
                       keep_identifiers=resources.settings.pacs_keep_identifiers,
                       site_of=resources.settings.site_of_client,
                       refuse_out_of_scope=True, reid=resources.reid)


def _store_all(resources: GatewayResources, client: str, parts: list[bytes],
               predictions_url: str, study: str | None) -> StowResponse:
    intake, response = _intake(resources), StowResponse()
    for data in parts:
        _store_one(intake, resources, client, data, response, predictions_url, study)
    return response


def _store_one(intake: DicomIntake, resources: GatewayResources, client: str, data: bytes,
               response: StowResponse, predictions_url: str, study: str | None) -> None:
    """One part: stored (Referenced SOP Sequence) or a failure entry; never an exception.

    With `study` (the request path's), a part of another study is refused: the job's SR and
    heatmap go to the study the instance itself names, so a path naming another study would
    mislead the client about where they go.
    """
    sop_class: str | None = None
    sop_instance: str | None = None
    try:
        dataset = read_instance(data, resources.limits)
        sop_class = str(dataset.get("SOPClassUID", "")) or None
        sop_instance = str(dataset.get("SOPInstanceUID", "")) or None
        if sop_class not in ACCEPTED_SOP_CLASSES:
            response.failure(sop_class, sop_instance, SOP_CLASS_NOT_SUPPORTED)
            return
        if study is not None and str(dataset.get("StudyInstanceUID", "")) != study:
            log.warning("STOW-RS part from %s refused: not of the study the path names", client)
            response.failure(sop_class, sop_instance, STUDY_MISMATCH, comment=(
                "The instance's Study Instance UID is not the study of the request path; "
                "store it under its own study (or POST /dicomweb/studies)."))
            return
        received = intake.receive(dataset, client=client, route=STOW_RS)
    except NotChestRadiographError as exc:
        resources.metrics.count_scope_refusal(exc)
        response.failure(sop_class, sop_instance, CANNOT_UNDERSTAND,
                         comment=f"{exc.code} ({', '.join(exc.reasons)}): {exc.message}")
    except ImageError:
        response.failure(sop_class, sop_instance, CANNOT_UNDERSTAND)
    except CXRError as exc:
        response.failure(sop_class, sop_instance,
                         OUT_OF_RESOURCES if exc.transient else CANNOT_UNDERSTAND)
    except (redis.RedisError, OSError):
        log.exception("STOW-RS part from %s not stored: storage or Redis failed", client)
        response.failure(sop_class, sop_instance, OUT_OF_RESOURCES)
    except Exception:  # noqa: BLE001 - one part's failure must not lose the others' answers
        log.exception("STOW-RS part from %s failed unexpectedly", client)
        response.failure(sop_class, sop_instance, PROCESSING_FAILURE)
    else:
        if received.disposition == Disposition.CONFLICT:
            response.failure(received.sop_class_uid, received.sop_instance_uid,
                             DUPLICATE_SOP_INSTANCE)
        else:  # queued, or sent before (same image)
            url = f"{predictions_url}/{received.job_id}" if received.job_id else None
            response.stored(received.sop_class_uid, received.sop_instance_uid, url)


STOW_RESPONSES = {200: {"content": {"application/dicom+json": {}}},
                  202: {"description": "some instances failed"},
                  409: {"description": "no instance stored"},
                  **problem_responses(401, 408, 413, 415, 422, 429)}
StudyPath = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description=(
    "The Study Instance UID every instance of the request must have."))]


@router.post("/studies", summary="Store DICOM instances (STOW-RS)", response_class=Response,
             responses=STOW_RESPONSES)
async def store_instances(request: Request, resources: ResourcesDep,
                          client: ClientDep) -> Response:
    """Each `application/dicom` part becomes a prediction job, de-identified, like C-STORE."""
    return await _store(request, resources, client, None)


@router.post("/studies/{study}", summary="Store DICOM instances of one study (STOW-RS)",
             response_class=Response, responses=STOW_RESPONSES)
async def store_study_instances(request: Request, resources: ResourcesDep, client: ClientDep,
                                study: StudyPath) -> Response:
    """As `POST /dicomweb/studies`; a part of another study is refused (Failure Reason 0xC409)."""
    return await _store(request, resources, client, study)


async def _store(request: Request, resources: GatewayResources, client: str,
                 study: str | None) -> Response:
    parts = dicom_parts(request.headers.get("content-type", ""), await request.body())
    predictions_url = str(request.base_url).rstrip("/") + "/v1/predictions"
    response = await run_in_threadpool(_store_all, resources, client, parts, predictions_url,
                                       study)
    return Response(json.dumps(response.to_json()), status_code=response.http_status,
                    media_type="application/dicom+json")
