"""DICOMweb STOW-RS on the real gateway process: each part becomes a de-identified DICOM job."""

from __future__ import annotations

import io

import pytest
import redis
from pydicom import dcmread
from pydicom.dataset import Dataset

from shared.dicom_intake.receive import encode, instance_job_id
from shared.jobs.store import JobStore
from shared.storage import LocalStorage
from tests.pacs.studies import chest_dx, photograph

BOUNDARY = "cxr-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED, FAILED, FAILURE_REASON = "00081199", "00081198", "00081197"
REFERENCED_SOP_INSTANCE = "00081155"
STATUS_COMMENT = "00080418"  # Transaction Status Comment


def multipart(*parts: bytes) -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
                    + b"\r\n" for part in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def part(dataset: Dataset) -> bytes:
    return encode(dataset)


def stow(gateway, body: bytes, content_type: str = CONTENT_TYPE, as_client: str | None = "alice"):
    with gateway.client(as_client) as client:
        return client.post("/dicomweb/studies", content=body, headers={
            "Content-Type": content_type, "Accept": "application/dicom+json"})


def sequence_uids(answer: dict, tag: str) -> list[str]:
    return [item[REFERENCED_SOP_INSTANCE]["Value"][0] for item in answer[tag]["Value"]]


@pytest.fixture
def jobs(fresh_module_gateway) -> JobStore:
    return JobStore(redis.Redis.from_url(fresh_module_gateway.env["CXR_REDIS_URL"]),
                    LocalStorage(fresh_module_gateway.storage_root))


def test_stow_rs_stores_each_instance_as_a_dicom_job(fresh_module_gateway, jobs):
    first, second = chest_dx(), chest_dx(label="NORMAL")
    response = stow(fresh_module_gateway, multipart(part(first), part(second)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert sequence_uids(answer, REFERENCED) == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert FAILED not in answer
    record = jobs.get(instance_job_id(first.SOPInstanceUID, "alice", "stow-rs"))
    assert record.source == "dicom" and record.client_id == "alice"
    assert record.extra["dicom"]["study_instance_uid"] == first.StudyInstanceUID
    stored_file = fresh_module_gateway.storage_root / record.upload_key
    stored = dcmread(io.BytesIO(stored_file.read_bytes()))
    assert not stored.PatientName and stored.PatientIdentityRemoved == "YES"


def test_stow_rs_partial_failure_is_202_and_total_failure_409(fresh_module_gateway, jobs):
    good = chest_dx()
    response = stow(fresh_module_gateway, multipart(part(good), b"not dicom at all"))
    assert response.status_code == 202
    answer = response.json()
    assert sequence_uids(answer, REFERENCED) == [good.SOPInstanceUID]
    assert answer[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0xC000]
    assert jobs.get(instance_job_id(good.SOPInstanceUID, "alice", "stow-rs")) is not None

    response = stow(fresh_module_gateway, multipart(b"garbage"))
    assert response.status_code == 409
    answer = response.json()
    assert REFERENCED not in answer
    assert answer[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0xC000]


def test_stow_rs_refuses_other_sop_classes_and_media_types(fresh_module_gateway):
    secondary_capture = chest_dx()
    secondary_capture.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    response = stow(fresh_module_gateway, multipart(part(secondary_capture)))
    assert response.status_code == 409
    assert response.json()[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0x0122]
    assert stow(fresh_module_gateway, b"{}", content_type="application/json").status_code == 415


def test_stow_rs_needs_an_api_key(fresh_module_gateway):
    response = stow(fresh_module_gateway, multipart(part(chest_dx())), as_client=None)
    assert response.status_code == 401


def test_stow_rs_lists_a_refused_film_as_failed_with_its_reason(fresh_module_gateway, jobs):
    good, photo, lateral = chest_dx(), chest_dx(pixels=photograph()), chest_dx(view="LL")
    response = stow(fresh_module_gateway, multipart(part(good), part(photo), part(lateral)))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert sequence_uids(answer, REFERENCED) == [good.SOPInstanceUID]
    failed = answer[FAILED]["Value"]
    assert sequence_uids(answer, FAILED) == [photo.SOPInstanceUID, lateral.SOPInstanceUID]
    assert [item[FAILURE_REASON]["Value"] for item in failed] == [[0xC000], [0xC000]]
    comments = [item[STATUS_COMMENT]["Value"][0] for item in failed]
    assert comments[0].startswith("not_a_chest_radiograph (colour_image)")
    assert comments[1].startswith("not_a_chest_radiograph (lateral_view)")
    assert "not analysed" in comments[0]
    for refused in (photo, lateral):
        assert jobs.get(instance_job_id(refused.SOPInstanceUID, "alice", "stow-rs")) is None
    metrics = fresh_module_gateway.metrics_text()
    assert 'cxr_gateway_scope_refused_total{reason="colour_image"} 1.0' in metrics
    assert 'cxr_gateway_scope_refused_total{reason="lateral_view"} 1.0' in metrics
