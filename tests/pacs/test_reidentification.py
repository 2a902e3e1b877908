"""Re-identification keys end to end, with real services (gateway, DICOM node, report sender,
inference worker, model server, hospital PACS) and `CXR_REID_KEYS` set.

The identifier corpus goes in by HTTPS upload, STOW-RS and C-STORE (and one lateral film, which is
refused); afterwards no identifier value is in the job storage, Redis, any service log or the
audit trail (the PACS-route UIDs excepted, as without keys: `tests/reliability/
test_identifier_corpus.py`), nor readable in the re-identification store; and the SR, Secondary
Capture and refusal notice the hospital PACS received carry the original Patient ID, Patient's
Name, Accession Number and Study Instance UID, and nothing else of the corpus, and validate.
With the key expired, a resend goes out without identifiers and still succeeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from cryptography.fernet import Fernet
from pydicom.dataset import Dataset

from shared.dicom_intake.receive import instance_job_id
from shared.jobs.queue import REPORT_QUEUE, REPORT_STATE_KEY, REPORT_TASK
from shared.jobs.records import JobStatus
from shared.reidentification import FIELDS, PREFIX
from tests.pacs.conftest import start_node, stop_node
from tests.pacs.dicom_validation import iod_problems
from tests.pacs.peers import MODALITY_AE, c_store, modality_ae
from tests.pacs.test_stow import CONTENT_TYPE, multipart
from tests.reliability.test_identifier_corpus import Everything, _leaks
from tests.shared.identified_dicom import IdentifiedInstance, identified_chest_dx
from tests.shared.xray_files import dicom_bytes
from tests.support.gateway import start_gateway
from tests.support.procs import wait_until

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 240
FILED_BY = ("PatientID", "PatientName", "AccessionNumber", "StudyInstanceUID")
# What the reports may carry of the corpus: the key's fields, and the UIDs of the original image
# they reference (evidence and source image).
SENT_BACK = (*FIELDS, "SeriesInstanceUID", "SOPInstanceUID")


@dataclass
class KeyedStack:
    everything: Everything
    key: str
    reid_root: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_model_server) -> Iterator[KeyedStack]:
    work = tmp_path_factory.mktemp("reidentification")
    key, reid_root = Fernet.generate_key().decode(), work / "reid"  # apart from the job storage
    reid_env = {"CXR_REID_KEYS": key, "CXR_REID_STORAGE_ROOT": str(reid_root)}
    node = start_node(work, model_server_target=shared_model_server.grpc_target,
                      destination_allows=["CXR"],
                      env={**reid_env, "CXR_PACS_STOW_REPORT_CLIENTS": "alice"})
    try:
        gateway = start_gateway(work, node.redis.url, tls=True,
                                env={**reid_env, "CXR_RATE_LIMIT_PER_MINUTE": "100000"})
    except BaseException:
        stop_node(node)
        raise
    yield KeyedStack(Everything(node, gateway), key, reid_root)
    gateway.stop()
    stop_node(node)


def _wait_finished(stack: KeyedStack, job_id: str, status: JobStatus) -> None:
    node = stack.everything.node

    def done() -> bool:
        record = node.job(job_id)
        return record is not None and record.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    wait_until(done, JOB_TIMEOUT_S, f"job {job_id}", node.worker.process if node.worker else None)
    assert node.job(job_id).status == status, node.job(job_id)


def _wait_sent(stack: KeyedStack, job_id: str) -> dict:
    node = stack.everything.node

    def sent() -> bool:
        return node.job(job_id).extra.get(REPORT_STATE_KEY, {}).get("state") == "sent"
    wait_until(sent, JOB_TIMEOUT_S, f"report of {job_id}", node.sender)
    return node.job(job_id).extra[REPORT_STATE_KEY]


def _received(stack: KeyedStack, instance: IdentifiedInstance) -> dict[str, Dataset]:
    """What the hospital PACS holds for the instance's study, by modality (SR, OT)."""
    study = instance.dataset.StudyInstanceUID
    return {ds.Modality: ds for ds in stack.everything.node.hospital.instances_for_study(study)}


def _audit(stack: KeyedStack) -> list[dict]:
    return [json.loads(line) for line in
            stack.everything.node.audit_log.read_text().splitlines() if line.startswith("{")]


def test_the_pacs_gets_the_original_identifiers_and_nothing_else_keeps_them(stack):
    node, gateway = stack.everything.node, stack.everything.gateway
    uploaded, stowed, c_stored = (identified_chest_dx() for _ in range(3))
    refused = identified_chest_dx()
    refused.dataset.ViewPosition = "LL"

    with gateway.client("alice", timeout=60) as http:
        response = http.post("/v1/predictions", files={
            "file": ("chest.dcm", dicom_bytes(uploaded.dataset))})
        assert response.status_code == 202, response.text
        upload_job = response.json()["job_id"]
        response = http.post("/dicomweb/studies", headers={"Content-Type": CONTENT_TYPE},
                             content=multipart(dicom_bytes(stowed.dataset)))
        assert response.status_code == 200, response.text
    for instance in (c_stored, refused):
        assert c_store(node.scp_port, instance.dataset) == 0x0000

    jobs = {"stow-rs": instance_job_id(stowed.dataset.SOPInstanceUID, "alice", "stow-rs"),
            "c-store": instance_job_id(c_stored.dataset.SOPInstanceUID, MODALITY_AE, "c-store"),
            "refused": instance_job_id(refused.dataset.SOPInstanceUID, MODALITY_AE, "c-store")}
    _wait_finished(stack, upload_job, JobStatus.SUCCEEDED)
    _wait_finished(stack, jobs["stow-rs"], JobStatus.SUCCEEDED)
    _wait_finished(stack, jobs["c-store"], JobStatus.SUCCEEDED)
    _wait_finished(stack, jobs["refused"], JobStatus.FAILED)
    states = {name: _wait_sent(stack, job_id) for name, job_id in jobs.items()}
    assert all(state["reidentified"] is True for state in states.values()), states

    # Every path recorded a key, one object per job, none of it readable at rest.
    keys = {path.name: path.read_bytes() for path in (stack.reid_root / PREFIX).iterdir()}
    assert set(keys) == {upload_job, *jobs.values()}
    everything = [uploaded, stowed, c_stored, refused]
    assert [where for token in keys.values() for instance in everything
            for where in instance.found_in(token)] == []

    # Nothing stored, logged or audited holds an identifier (the PACS-route UIDs excepted).
    places = {**stack.everything.stored_objects(), **stack.everything.logs()}
    leaks = [*_leaks("upload", uploaded, places), *_leaks("stow-rs", stowed, places),
             *_leaks("c-store", c_stored, places), *_leaks("c-store", refused, places)]
    assert leaks == [], "\n".join(" | ".join(leak) for leak in leaks)

    # What the PACS got: the original identifiers, nothing else of the corpus, valid objects.
    for instance, modalities in ((stowed, {"SR", "OT"}), (c_stored, {"SR", "OT"}),
                                 (refused, {"SR"})):
        received = _received(stack, instance)
        assert set(received) == modalities
        for made in received.values():
            for keyword in FILED_BY:
                assert str(made[keyword].value) == str(instance.dataset[keyword].value), keyword
            assert made.PatientBirthDate == instance.dataset.PatientBirthDate
            assert "PatientIdentityRemoved" not in made
            assert [where for where in instance.found_in(dicom_bytes(made))
                    if where not in SENT_BACK] == []
            assert iod_problems(made) == []

    lines = _audit(stack)
    deliveries = {line["job_id"]: line for line in lines if line["action"] == "pacs_delivery"}
    for job_id in jobs.values():
        assert deliveries[job_id]["state"] == "sent"
        assert deliveries[job_id]["reidentified"] is True
        assert deliveries[job_id]["destination"].startswith("HOSPITALPACS@")
    associations = [line for line in lines if line["action"] == "dicom_association"]
    assert {(line["client"], line["accepted"], line["address"]) for line in associations} == {
        (MODALITY_AE, True, "127.0.0.1")}


def test_an_expired_key_sends_the_report_without_identifiers(stack):
    node = stack.everything.node
    instance = identified_chest_dx()
    assert c_store(node.scp_port, instance.dataset) == 0x0000
    job_id = instance_job_id(instance.dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    _wait_finished(stack, job_id, JobStatus.SUCCEEDED)
    assert _wait_sent(stack, job_id)["reidentified"] is True
    first = _received(stack, instance)["SR"]
    assert first.PatientID == instance.dataset.PatientID

    # The key as it is once the retention limit (30 days by default) has passed.
    key_file = stack.reid_root / PREFIX / job_id
    plain = Fernet(stack.key.encode()).decrypt(key_file.read_bytes())
    key_file.write_bytes(Fernet(stack.key.encode()).encrypt_at_time(
        plain, int(time.time()) - 31 * 86400))
    node.jobs.set_extra(job_id, REPORT_STATE_KEY, {"state": "pending", "attempts": 0})
    node.hospital.received.clear()
    producer = Celery("test-producer", broker=node.redis.url, set_as_current=False)
    producer.send_task(REPORT_TASK, args=[job_id], queue=REPORT_QUEUE)
    producer.close()

    state = _wait_sent(stack, job_id)
    assert state["reidentified"] is False
    received = _received(stack, instance)
    assert set(received) == {"SR", "OT"}
    for made in received.values():
        assert made.SOPInstanceUID in (first.SOPInstanceUID, state["sc_sop_instance_uid"])
        assert not made.PatientID and not made.PatientName and not made.AccessionNumber
        assert made.StudyInstanceUID == instance.dataset.StudyInstanceUID  # the job's record
        assert [where for where in instance.found_in(dicom_bytes(made))
                if where not in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")] == []
        assert iod_problems(made) == []
    line = [entry for entry in _audit(stack)
            if entry["action"] == "pacs_delivery" and entry["job_id"] == job_id][-1]
    assert (line["state"], line["reidentified"]) == ("sent", False)
    sender_log = Path(node.sender.log_path).read_text()
    assert f"job {job_id} sent" in sender_log and "without the original patient" in sender_log
    assert instance.found_in(sender_log) == []


def test_a_rejected_association_is_one_audit_line(stack):
    node = stack.everything.node
    assoc = modality_ae("STRANGER").associate("127.0.0.1", node.scp_port, ae_title="CXR")
    assert assoc.is_rejected

    def rejected() -> list[dict]:
        return [line for line in _audit(stack) if line["action"] == "dicom_association"
                and line["client"] == "STRANGER"]
    wait_until(lambda: rejected() != [], 10, "audit line of the rejected association")
    [line] = rejected()
    assert (line["accepted"], line["status"], line["reason"], line["address"]) == (
        False, 403, "calling_ae_title_not_allowed", "127.0.0.1")
