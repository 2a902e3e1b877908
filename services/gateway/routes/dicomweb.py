"""DICOMweb STOW-RS: `POST /dicomweb/studies`; each instance becomes a job as over C-STORE."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import ClientDep, ResourcesDep
from services.gateway.problems import problem_responses
from services.gateway.resources import GatewayResources
from services.gateway.stow import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    StowResponse,
    dicom_parts,
    read_instance,
)
from shared.dicom_intake.receive import DicomIntake
from shared.dicom_intake.screening import ACCEPTED_SOP_CLASSES
from shared.errors import CXRError, ImageError, NotChestRadiographError

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])


def _intake(resources: GatewayResources) -> DicomIntake:
    return DicomIntake(storage=resources.storage, jobs=resources.jobs, queue=resources.queue,
                       limits=resources.limits,
                       keep_identifiers=resources.settings.pacs_keep_identifiers,
                       refuse_out_of_scope=True)


def _store_all(resources: GatewayResources, client: str, parts: list[bytes]) -> StowResponse:
    intake, response = _intake(resources), StowResponse()
    for data in parts:
        dataset = read_instance(data)
        if dataset is None:
            response.failure(None, None, CANNOT_UNDERSTAND)
            continue
        sop_class, sop_instance = str(dataset.get("SOPClassUID", "")), str(dataset.SOPInstanceUID)
        if sop_class not in ACCEPTED_SOP_CLASSES:
            response.failure(sop_class, sop_instance, SOP_CLASS_NOT_SUPPORTED)
            continue
        try:
            intake.receive(dataset, client=client, route="stow-rs")
        except NotChestRadiographError as exc:
            resources.metrics.count_scope_refusal(exc)
            response.failure(sop_class, sop_instance, CANNOT_UNDERSTAND,
                             comment=f"{exc.code} ({', '.join(exc.reasons)}): {exc.message}")
        except ImageError:
            response.failure(sop_class, sop_instance, CANNOT_UNDERSTAND)
        except CXRError as exc:
            response.failure(sop_class, sop_instance,
                             OUT_OF_RESOURCES if exc.transient else CANNOT_UNDERSTAND)
        else:  # queued, or already known
            response.stored(sop_class, sop_instance)
    return response


@router.post(
    "/studies", summary="Store DICOM instances (STOW-RS)", response_class=Response,
    responses={200: {"content": {"application/dicom+json": {}}},
               202: {"description": "some instances failed"},
               409: {"description": "no instance stored"},
               **problem_responses(401, 413, 415, 429)},
)
async def store_instances(request: Request, resources: ResourcesDep,
                          client: ClientDep) -> Response:
    """Each `application/dicom` part becomes a prediction job, de-identified, like C-STORE."""
    parts = dicom_parts(request.headers.get("content-type", ""), await request.body())
    response = await run_in_threadpool(_store_all, resources, client, parts)
    return Response(json.dumps(response.to_json()), status_code=response.http_status,
                    media_type="application/dicom+json")
