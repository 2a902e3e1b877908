"""The identifier corpus through every intake path, to real services: HTTPS upload, STOW-RS and
C-STORE, each job predicted and its report sent back; then every stored object (files, Redis),
every log line the services wrote and every instance the hospital PACS received are searched for
every identifier value.

The one exception is deliberate: a C-STORE or STOW-RS job keeps the original Study, Series and
SOP Instance UIDs in its record (`extra.dicom`) and its audit line (in the audit file and the
service's log) names the SOP Instance UID, because the results go back into the original study
at the PACS that sent them (the SR and Secondary Capture reference them). Uploads keep no
original UID anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.dicom_intake.receive import instance_job_id
from shared.jobs.records import JobStatus
from tests.pacs.conftest import PacsNode, start_node, stop_node
from tests.pacs.peers import MODALITY_AE, c_store
from tests.pacs.test_stow import CONTENT_TYPE, multipart
from tests.shared.identified_dicom import IdentifiedInstance, identified_chest_dx
from tests.shared.xray_files import dicom_bytes
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.procs import wait_until

pytestmark = pytest.mark.slow

PER_PATH = 2
JOB_TIMEOUT_S = 240
# What a PACS-route job may keep, where (see the module docstring).
PACS_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
PACS_UID_PLACES = ("jobs/", "redis:cxr:job:", "audit.log", "hospital:")
AUDIT_LOGGER = "cxr.audit"  # audit lines also go to the service's own log


@dataclass
class Everything:
    node: PacsNode
    gateway: GatewayProcess

    def stored_objects(self) -> dict[str, bytes]:
        """Every file in storage, and every Redis value, by where it is."""
        root = self.node.storage_root
        found = {str(path.relative_to(root)): path.read_bytes()
                 for path in root.rglob("*") if path.is_file()}
        client = self.node.redis.client()
        for key in client.scan_iter():
            kind = client.type(key)
            if kind == b"string":
                value = client.get(key) or b""
            elif kind == b"list":
                value = b"\n".join(client.lrange(key, 0, -1))
            elif kind == b"hash":
                value = b"\n".join(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == b"set":
                value = b"\n".join(client.smembers(key))
            elif kind == b"zset":
                value = b"\n".join(client.zrange(key, 0, -1))
            else:
                value = b""
            found[f"redis:{key.decode(errors='replace')}"] = key + b" " + value
        return found

    def logs(self) -> dict[str, bytes]:
        processes = [self.node.scp, self.node.sender, self.gateway.process]
        if self.node.worker is not None:
            processes.append(self.node.worker.process)
        logs = {process.name: Path(process.log_path).read_bytes() for process in processes}
        logs["audit.log"] = self.node.audit_log.read_bytes()
        if self.gateway.audit_log != self.node.audit_log and self.gateway.audit_log.exists():
            logs["gateway audit.log"] = self.gateway.audit_log.read_bytes()
        return logs


@pytest.fixture(scope="module")
def everything(tmp_path_factory, shared_model_server) -> Iterator[Everything]:
    work = tmp_path_factory.mktemp("identifiers")
    node = start_node(work, model_server_target=shared_model_server.grpc_target,
                      destination_allows=["CXR"], env={"CXR_PACS_STOW_REPORT_CLIENTS": "alice"})
    try:
        # the same Redis, storage folder and audit file as the DICOM node
        gateway = start_gateway(work, node.redis.url, tls=True,
                                env={"CXR_RATE_LIMIT_PER_MINUTE": "100000"})
    except BaseException:
        stop_node(node)
        raise
    yield Everything(node, gateway)
    gateway.stop()
    stop_node(node)


def _wait_succeeded(node: PacsNode, job_id: str) -> None:
    def done() -> bool:
        record = node.job(job_id)
        return record is not None and record.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    wait_until(done, JOB_TIMEOUT_S, f"job {job_id}", node.worker.process if node.worker else None)
    assert node.job(job_id).status == JobStatus.SUCCEEDED, node.job(job_id)


def _wait_report_sent(node: PacsNode, job_id: str) -> None:
    def sent() -> bool:
        record = node.job(job_id)
        return record.extra.get("pacs_report", {}).get("state") == "sent"
    wait_until(sent, JOB_TIMEOUT_S, f"report of {job_id}", node.sender)


def test_no_identifier_is_stored_logged_or_sent_on_any_intake_path(everything):
    node, gateway = everything.node, everything.gateway
    uploaded = [identified_chest_dx() for _ in range(PER_PATH)]
    stowed = [identified_chest_dx(label="NORMAL") for _ in range(PER_PATH)]
    c_stored = [identified_chest_dx() for _ in range(PER_PATH)]

    upload_jobs = []
    with gateway.client("alice", timeout=60) as http:
        for instance in uploaded:
            response = http.post("/v1/predictions", files={
                "file": ("chest.dcm", dicom_bytes(instance.dataset))})
            assert response.status_code == 202, response.text
            upload_jobs.append(response.json()["job_id"])
        response = http.post("/dicomweb/studies", headers={"Content-Type": CONTENT_TYPE},
                             content=multipart(*(dicom_bytes(i.dataset) for i in stowed)))
        assert response.status_code == 200, response.text
    for instance in c_stored:
        assert c_store(node.scp_port, instance.dataset) == 0x0000

    pacs_jobs = [*(instance_job_id(i.dataset.SOPInstanceUID, "alice", "stow-rs") for i in stowed),
                 *(instance_job_id(i.dataset.SOPInstanceUID, MODALITY_AE, "c-store")
                   for i in c_stored)]
    for job_id in (*upload_jobs, *pacs_jobs):
        _wait_succeeded(node, job_id)
    for job_id in pacs_jobs:
        _wait_report_sent(node, job_id)
    assert len(node.hospital.received) == 2 * len(pacs_jobs)  # an SR and a Secondary Capture

    places = {**everything.stored_objects(), **everything.logs()}
    for index, received in enumerate(node.hospital.received):
        places[f"hospital:{index}"] = dicom_bytes(received)
    assert any(key.startswith("uploads/") for key in places)
    leaks = []
    for path, instances in (("upload", uploaded), ("stow-rs", stowed), ("c-store", c_stored)):
        for instance in instances:
            leaks += _leaks(path, instance, places)
    assert leaks == [], "\n".join(" | ".join(leak) for leak in leaks)


def _leaks(path: str, instance: IdentifiedInstance,
           places: dict[str, bytes]) -> list[tuple[str, str, str, str]]:
    """(intake path, attribute, where it was found, the line around it) for each value found."""
    found = []
    for place, content in places.items():
        for where in instance.found_in(content):
            text = content.decode("latin-1")
            value = instance.identifiers[where]
            lines = [line for line in text.splitlines() if value in line] or [text]
            for line in lines:
                allowed = (path != "upload" and where in PACS_UIDS
                           and (place.startswith(PACS_UID_PLACES) or AUDIT_LOGGER in line))
                if not allowed:
                    found.append((path, where, place, line[:200]))
    return found
