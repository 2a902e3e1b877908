"""Uploads are stored without patient identifiers, end to end: HTTPS gateway process -> storage
-> Celery worker -> model server, the stored upload read back from storage."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from tests.shared.identified_dicom import KEPT, identified_chest_dx
from tests.shared.test_strip_metadata import NAME, jpeg_with_names, png_with_names, xray
from tests.shared.xray_files import dicom_bytes, raw_implicit_dicom_bytes
from tests.support.gateway import GatewayProcess
from tests.support.redis import start_redis
from tests.support.stack import Stack, finished, gateway_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_model_server) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("privacy")
    redis_server = start_redis(work / "redis")
    try:
        with gateway_stack(work, redis_server.url, shared_model_server) as started:
            yield started
    finally:
        redis_server.process.stop()


def upload_and_wait(gateway: GatewayProcess, name: str, data: bytes) -> dict:
    with gateway.client("alice", timeout=60) as http:
        return finished(http, data, name)


def stored_files(gateway: GatewayProcess, job_id: str) -> dict[str, bytes]:
    root = gateway.storage_root
    return {str(path.relative_to(root)): path.read_bytes()
            for path in root.rglob("*") if path.is_file() and job_id in path.name}


def test_an_uploaded_dicom_is_stored_without_identifiers_and_still_predicted(stack):
    instance = identified_chest_dx()
    data = dicom_bytes(instance.dataset)
    assert len(instance.found_in(data)) == len(instance.identifiers)  # the corpus is honest

    view = upload_and_wait(stack.gateway, "chest.dcm", data)

    assert view["status"] == "succeeded", view
    assert view["result"]["label"] in ("NORMAL", "PNEUMONIA")
    job_id = view["job_id"]
    files = stored_files(stack.gateway, job_id)
    assert f"uploads/{job_id}" in files and f"jobs/{job_id}.json" in files
    for key, content in files.items():
        assert instance.found_in(content) == [], key
    stored = dcmread(io.BytesIO(files[f"uploads/{job_id}"]))
    assert stored.PatientIdentityRemoved == "YES"
    for keyword in KEPT:
        assert stored[keyword].value == instance.dataset[keyword].value, keyword
    assert instance.found_in(stack.gateway.process.log_tail(10**6)) == []
    assert instance.found_in(stack.worker.log_tail(10**6)) == []


def test_a_dicom_without_preamble_or_meta_group_is_stored_de_identified(stack):
    instance = identified_chest_dx(label="NORMAL")
    data = raw_implicit_dicom_bytes(instance.dataset)
    assert data[128:132] != b"DICM"

    view = upload_and_wait(stack.gateway, "raw.dcm", data)

    assert view["status"] == "succeeded", view
    stored = (stack.gateway.storage_root / "uploads" / view["job_id"]).read_bytes()
    assert instance.found_in(stored) == []
    shape = (instance.dataset.Rows, instance.dataset.Columns)
    assert dcmread(io.BytesIO(stored)).pixel_array.shape == shape


@pytest.mark.parametrize(("name", "make"), [("chest.jpeg", jpeg_with_names),
                                            ("chest.png", png_with_names)])
def test_jpeg_and_png_are_stored_without_their_metadata_and_still_predicted(stack, name, make):
    data = make(xray())
    assert NAME.encode() in data

    view = upload_and_wait(stack.gateway, name, data)

    assert view["status"] == "succeeded", view
    stored = (stack.gateway.storage_root / "uploads" / view["job_id"]).read_bytes()
    assert NAME.encode() not in stored
    with Image.open(io.BytesIO(stored)) as image, Image.open(io.BytesIO(data)) as original:
        assert np.array_equal(np.asarray(image), np.asarray(original))
