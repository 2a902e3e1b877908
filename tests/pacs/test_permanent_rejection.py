"""A destination that refuses the service for good is tried once, not in a loop."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import numpy as np
import pytest
from celery import Celery
from PIL import Image

from services.pacs.report import build_report
from services.pacs.sender import PermanentSendError, TransientSendError, send_instances
from shared.dicom_intake.receive import instance_job_id
from shared.jobs.queue import REPORT_QUEUE, REPORT_TASK
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult
from tests.pacs.conftest import PacsNode, start_node, stop_node
from tests.pacs.peers import MODALITY_AE, PACS_AE, ReceivingPacs, c_store
from tests.pacs.studies import chest_dx
from tests.support.procs import free_port, wait_until

RESULT = PredictionResult(label="PNEUMONIA", pneumonia_probability=0.9,
                          class_probabilities=ClassProbabilities(normal=0.1, bacterial=0.6,
                                                                 viral=0.3),
                          subtype="bacterial", threshold=0.5, model=ModelRef(name="cxr", version=7))


@pytest.fixture(scope="module")
def refusing_node(tmp_path_factory) -> Iterator[PacsNode]:
    """No inference worker; the hospital PACS only talks to an AE title that is not ours."""
    node = start_node(tmp_path_factory.mktemp("pacs-refusing"), model_server_target=None,
                      destination_allows=["SOMEONEELSE"])
    yield node
    stop_node(node)


def succeeded_dicom_job(node: PacsNode) -> str:
    """A job received over C-STORE, then finished here as the inference worker would."""
    dataset = chest_dx()
    assert c_store(node.scp_port, dataset) == 0x0000
    job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    png = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(png, format="PNG")
    (node.storage_root / "heatmaps").mkdir(exist_ok=True)
    (node.storage_root / "heatmaps" / f"{job_id}.png").write_bytes(png.getvalue())
    node.jobs.mark_running(job_id)
    node.jobs.mark_succeeded(job_id, RESULT, heatmap_key=f"heatmaps/{job_id}.png")
    return job_id


def test_permanent_rejection_is_not_retried(refusing_node):
    job_id = succeeded_dicom_job(refusing_node)
    producer = Celery("test-producer", broker=refusing_node.redis.url, set_as_current=False)
    producer.send_task(REPORT_TASK, args=[job_id], queue=REPORT_QUEUE)
    producer.close()

    def report_state() -> str | None:
        return refusing_node.job(job_id).extra.get("pacs_report", {}).get("state")

    wait_until(lambda: report_state() == "failed", 60, "report failed", refusing_node.sender)
    state = refusing_node.job(job_id).extra["pacs_report"]
    assert state["permanent"] is True and state["attempts"] == 1
    assert "rejected" in state["reason"].lower()
    time.sleep(5)  # longer than the test backoff (1-2 s): a retry would have connected again
    assert refusing_node.hospital.connections == 1
    assert refusing_node.hospital.received == []


def test_c_store_failure_status_is_permanent(refusing_node):
    job_id = succeeded_dicom_job(refusing_node)
    record = refusing_node.job(job_id)
    storage_root = refusing_node.storage_root
    report = build_report(record, (storage_root / record.upload_key).read_bytes(),
                          (storage_root / record.heatmap_key).read_bytes(), "test")
    full = ReceivingPacs(free_port(), ["CXR"], store_status=0xA700)
    full.start()
    try:
        with pytest.raises(PermanentSendError, match="0xA700"):
            send_instances([report.structured_report], calling_ae_title="CXR",
                           destination=(PACS_AE, "127.0.0.1", full.port), timeout_s=5)
    finally:
        full.stop()
    with pytest.raises(TransientSendError, match="no association"):
        send_instances([report.structured_report], calling_ae_title="CXR",
                       destination=(PACS_AE, "127.0.0.1", full.port), timeout_s=5)
