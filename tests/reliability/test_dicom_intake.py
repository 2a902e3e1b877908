"""Attacks on the DICOM intake, against the real gateway (STOW-RS and the upload route) and the
real DICOM node (`python -m services.pacs`, C-STORE), with Redis and the report sender:

1. memory exhaustion from small instances (nesting, element count, element size, Deflate and
   JPEG-LS bombs): refused before parsing or decoding, the process's peak RSS growth stays under
   `MEMORY_BOUND_MB` while normal instances keep being stored;
2. one sender's SOP Instance UID never makes another sender's job, and a different image under a
   UID the sender already used is refused as a duplicate (STOW failure 0x0111, C-STORE 0x0111);
3. a result whose image lacks type 2 attributes still reaches the PACS, and a report that cannot
   be built ends `failed` with a reason (never "pending" forever), counted on `/metrics`;
4. a malformed instance (transfer syntax contradicting its pixel data) is a permanent refusal:
   C-STORE 0xC000, a STOW failure entry, never 500 or 0xA700.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml
from celery import Celery
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

from services.pacs.report import TYPE_2_COPIED
from shared.dicom_intake.receive import encode, instance_job_id
from shared.jobs.queue import REPORT_QUEUE, REPORT_STATE_KEY, REPORT_TASK
from shared.report_delivery import note_pending
from shared.schemas import ClassProbabilities, ModelRef, PredictionResult
from tests.pacs.conftest import PacsNode, start_node, stop_node
from tests.pacs.peers import MODALITY_AE, c_store
from tests.pacs.studies import chest_dx
from tests.reliability import dicom_attacks
from tests.reliability.corpus import upload
from tests.reliability.memory import PeakRss
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.procs import REPO_ROOT, wait_until

pytestmark = pytest.mark.slow

MAX_UPLOAD_BYTES = 4_000_000
MAX_ELEMENT_BYTES = 1_000_000
# The node's association timeouts and per-address connection limit are not under test here
# (test_dicom_connections has them): they are generous, so that a node busy refusing an attack on
# a loaded machine does not time a peer out, and so that the normal traffic's connections, one
# after another from the same address as the attack's, are not refused while the node's threads
# for the ones just released are still ending.
LIMITS_ENV = {"CXR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
              "CXR_MAX_DICOM_ELEMENT_BYTES": str(MAX_ELEMENT_BYTES),
              "CXR_PACS_SCP_ACSE_TIMEOUT_S": "30", "CXR_PACS_NETWORK_TIMEOUT_S": "30",
              "CXR_PACS_SCP_MAX_CONNECTIONS_PER_ADDRESS": "32"}
# The stated ceiling: growth of the process's resident memory while attacks run (each one at a
# time, sent three times) beside normal traffic. Without the limits the nested instance alone
# took a gateway from 0.5 GB to over 5 GB.
MEMORY_BOUND_MB = 150
BOUNDARY = "cxr-attack-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED, FAILED = "00081199", "00081198"
FAILURE_REASON, RETRIEVE_URL, SOP_INSTANCE = "00081197", "00081190", "00081155"
CANNOT_UNDERSTAND, DUPLICATE_SOP_INSTANCE = 0xC000, 0x0111
ATTACK_KINDS = ("nested_300_undefined", "nested_300_defined", "100k_items", "large_element",
                "deflate_bomb", "jpeg_ls_10000")
RESULT = PredictionResult(label="PNEUMONIA", pneumonia_probability=0.9, threshold=0.5,
                          class_probabilities=ClassProbabilities(normal=0.1, bacterial=0.6,
                                                                 viral=0.3),
                          model=ModelRef(name="cxr-pneumonia", version=1))


@pytest.fixture(scope="module")
def attacks() -> dict[str, dicom_attacks.Attack]:
    return {
        "nested_300_undefined": dicom_attacks.nested_undefined(300),
        "nested_300_defined": dicom_attacks.nested_defined(300),
        "100k_items": dicom_attacks.many_items(100_000),
        "large_element": dicom_attacks.large_private_element(MAX_ELEMENT_BYTES + 500_000),
        "deflate_bomb": dicom_attacks.deflate_bomb(40 * MAX_UPLOAD_BYTES),
        "jpeg_ls_10000": dicom_attacks.jpeg_ls_bomb(10_000),
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_server) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("dicom-attacks"), redis_server.url,
                            env={**LIMITS_ENV, "CXR_RATE_LIMIT_PER_MINUTE": "100000"})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[PacsNode]:
    """SCP, report sender, Redis and the hospital PACS; jobs are finished by the test."""
    started = start_node(tmp_path_factory.mktemp("dicom-node"), model_server_target=None,
                         destination_allows=["CXR"], env=LIMITS_ENV)
    yield started
    stop_node(started)


def multipart(*parts: bytes) -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
                    + b"\r\n" for part in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(http, *parts: bytes):
    return http.post("/dicomweb/studies", content=multipart(*parts),
                     headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"})


def failure_reasons(answer: dict) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in answer.get(FAILED, {}).get("Value", [])]


def referenced(answer: dict) -> list[dict]:
    return answer.get(REFERENCED, {}).get("Value", [])


def c_store_bytes(port: int, data: bytes, transfer_syntax: str, tmp: Path,
                  calling: str = MODALITY_AE) -> int:
    """C-STORE a Part 10 file as its bytes are (pynetdicom sends it without decoding it)."""
    path = tmp / f"{generate_uid()}.dcm"
    path.write_bytes(data)
    ae = AE(ae_title=calling)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [transfer_syntax])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="CXR")
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(path).Status)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        path.unlink()


class NormalTraffic:
    """Valid instances sent one after another in a thread while an attack runs."""

    def __init__(self, send) -> None:
        self._send = send
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.stored = 0
        self.failures: list[str] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                outcome = self._send()
            except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
                outcome = repr(exc)
            if outcome is True:
                self.stored += 1
            else:
                self.failures.append(str(outcome))

    def __enter__(self) -> NormalTraffic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


# --- 1. memory exhaustion ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_stow_and_upload_refuse_the_attack_within_the_memory_bound(gateway, attacks, kind,
                                                                   fault_report):
    attack = attacks[kind]

    def normal_stow() -> bool | str:
        with gateway.client("carol") as http:
            response = stow(http, encode(chest_dx()))
        return response.status_code == 200 or f"{response.status_code} {response.text[:200]}"

    with gateway.client("alice", timeout=120) as http, PeakRss(gateway.process.pid) as peak, \
            NormalTraffic(normal_stow) as normal:
        answers = [stow(http, attack.data) for _ in range(3)]
        uploads = [http.post("/v1/predictions", content=upload(attack.data, b"x.dcm").content,
                             headers=upload(attack.data).headers) for _ in range(3)]
    for response in answers:
        assert response.status_code == 409, response.text
        assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    for response in uploads:
        assert response.status_code in (413, 422), response.text
        assert response.json()["code"] in ("dicom_too_complex", "image_too_large")
    assert normal.failures == [] and normal.stored >= 1
    assert peak.growth_mb < MEMORY_BOUND_MB, f"{kind}: grew {peak.growth_mb:.0f} MiB"
    job_id = instance_job_id(attack.sop_instance_uid, "alice", "stow-rs")
    with gateway.client("alice") as http:
        assert http.get(f"/v1/predictions/{job_id}").status_code == 404
        assert stow(http, encode(chest_dx())).status_code == 200  # still served after
    fault_report({"scenario": f"stow+upload {kind}", "sent": 6, "5xx": 0,
                  "normal_stored": normal.stored, "peak_rss_mb": round(peak.peak_mb),
                  "growth_mb": round(peak.growth_mb)})


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_c_store_refuses_the_attack_within_the_memory_bound(node, attacks, kind, tmp_path,
                                                            fault_report):
    attack = attacks[kind]

    def normal_store() -> bool | str:
        status = c_store(node.scp_port, chest_dx(), calling="OTHERMOD")
        return status == 0x0000 or f"status 0x{status:04X}"

    with PeakRss(node.scp.pid) as peak, NormalTraffic(normal_store) as normal:
        statuses = [c_store_bytes(node.scp_port, attack.data, attack.transfer_syntax, tmp_path)
                    for _ in range(3)]
    assert statuses == [CANNOT_UNDERSTAND] * 3, [f"0x{s:04X}" for s in statuses]
    assert normal.failures == [] and normal.stored >= 1
    assert peak.growth_mb < MEMORY_BOUND_MB, f"{kind}: grew {peak.growth_mb:.0f} MiB"
    assert node.job(instance_job_id(attack.sop_instance_uid, MODALITY_AE, "c-store")) is None
    assert c_store(node.scp_port, chest_dx()) == 0x0000  # still served after
    fault_report({"scenario": f"c-store {kind}", "sent": 3, "refused_0xC000": 3,
                  "normal_stored": normal.stored, "peak_rss_mb": round(peak.peak_mb),
                  "growth_mb": round(peak.growth_mb)})


# --- 2. one sender's UID never stands in for another's ------------------------------------


def decoy_dx(sop_instance_uid: str):
    """Another sender's image under the same UID: a chest film mirrored (passes screening)."""
    dataset = chest_dx()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    dataset.PixelData = np.ascontiguousarray(np.fliplr(dataset.pixel_array)).tobytes()
    return dataset


def real_dx(sop_instance_uid: str, label: str = "PNEUMONIA"):
    dataset = chest_dx(label=label)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    return dataset


def stored_pixels(storage_root: Path, record) -> np.ndarray:
    return dcmread(io.BytesIO((storage_root / record.upload_key).read_bytes())).pixel_array


def test_stow_a_taken_uid_makes_the_senders_own_job(gateway, redis_server):
    uid = generate_uid()
    decoy, film = decoy_dx(uid), real_dx(uid)
    jobs = gateway_jobs(gateway, redis_server)
    with gateway.client("bob") as bob, gateway.client("alice") as alice:
        assert stow(bob, encode(decoy)).status_code == 200
        answer = stow(alice, encode(film))
        assert answer.status_code == 200, answer.text
        item = referenced(answer.json())[0]
        assert item[SOP_INSTANCE]["Value"] == [uid]
        url = item[RETRIEVE_URL]["Value"][0]
        job_id = url.rsplit("/", 1)[1]
        assert job_id == instance_job_id(uid, "alice", "stow-rs")
        assert alice.get(f"/v1/predictions/{job_id}").status_code == 200
        assert bob.get(f"/v1/predictions/{job_id}").status_code == 404
        # Alice's job holds her film, Bob's holds his decoy.
        np.testing.assert_array_equal(stored_pixels(gateway.storage_root, jobs.get(job_id)),
                                      film.pixel_array)
        bobs = jobs.get(instance_job_id(uid, "bob", "stow-rs"))
        np.testing.assert_array_equal(stored_pixels(gateway.storage_root, bobs),
                                      decoy.pixel_array)
        # The same film again: one job, reported as stored (it is).
        again = stow(alice, encode(film))
        assert again.status_code == 200 and referenced(again.json())[0][RETRIEVE_URL] == \
            item[RETRIEVE_URL]
        # A different image under the UID Alice already used: refused as a duplicate.
        other = stow(alice, encode(real_dx(uid, label="NORMAL")))
        assert other.status_code == 409, other.text
        assert failure_reasons(other.json()) == [DUPLICATE_SOP_INSTANCE]
        np.testing.assert_array_equal(stored_pixels(gateway.storage_root, jobs.get(job_id)),
                                      film.pixel_array)


def gateway_jobs(gateway, redis_server):
    from shared.jobs.store import JobStore
    from shared.storage import LocalStorage
    return JobStore(redis.Redis.from_url(redis_server.url), LocalStorage(gateway.storage_root))


def test_c_store_after_a_stow_squatter_keeps_the_modalitys_film(node, gateway, redis_server):
    """Bob (an API client) takes the UID first; the modality's film still makes its own job, and
    a second, different image from the modality under that UID is refused."""
    uid = generate_uid()
    film = real_dx(uid)
    with gateway.client("bob") as bob:
        assert stow(bob, encode(decoy_dx(uid))).status_code == 200
    assert c_store(node.scp_port, decoy_dx(uid), calling="OTHERMOD") == 0x0000
    assert c_store(node.scp_port, film) == 0x0000
    record = node.job(instance_job_id(uid, MODALITY_AE, "c-store"))
    assert record is not None and record.client_id == MODALITY_AE
    np.testing.assert_array_equal(stored_pixels(node.storage_root, record), film.pixel_array)
    assert c_store(node.scp_port, film) == 0x0000  # the same film resent: Success, one job
    assert c_store(node.scp_port, real_dx(uid, label="NORMAL")) == DUPLICATE_SOP_INSTANCE
    np.testing.assert_array_equal(
        stored_pixels(node.storage_root, node.job(record.job_id)), film.pixel_array)
    jobs_with_uid = [path for path in (node.storage_root / "jobs").iterdir()
                     if uid in path.read_text()]
    assert len(jobs_with_uid) == 2  # MODALITY's and OTHERMOD's, nobody else's


# --- 3. every report delivery ends sent or failed -----------------------------------------


def finish_job(node: PacsNode, job_id: str) -> None:
    """Finish a received job as the inference worker does, then queue its report."""
    png = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(png, format="PNG")
    (node.storage_root / "heatmaps").mkdir(exist_ok=True)
    (node.storage_root / "heatmaps" / f"{job_id}.png").write_bytes(png.getvalue())
    node.jobs.mark_running(job_id)
    node.jobs.mark_succeeded(job_id, RESULT, heatmap_key=f"heatmaps/{job_id}.png")
    node.jobs.set_extra(job_id, REPORT_STATE_KEY, {"state": "pending", "attempts": 0})
    note_pending(redis.Redis.from_url(node.redis.url), job_id)
    producer = Celery("test-producer", broker=node.redis.url, set_as_current=False)
    producer.send_task(REPORT_TASK, args=[job_id], queue=REPORT_QUEUE)
    producer.close()


def report_state(node: PacsNode, job_id: str, states=("sent", "failed")) -> dict:
    def ended() -> bool:
        return node.job(job_id).extra.get(REPORT_STATE_KEY, {}).get("state") in states
    wait_until(ended, 60, f"report of {job_id} sent or failed", node.sender)
    return node.job(job_id).extra[REPORT_STATE_KEY]


@pytest.mark.parametrize("missing", [("PatientSex",), ("StudyID",), ("StudyDate",),
                                     ("ReferringPhysicianName",), TYPE_2_COPIED])
def test_a_film_without_type_2_attributes_still_gets_its_report(node, missing, fault_report):
    dataset = chest_dx(study_uid=generate_uid())
    for keyword in missing:
        if keyword in dataset:
            delattr(dataset, keyword)
    assert c_store(node.scp_port, dataset) == 0x0000
    job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    finish_job(node, job_id)
    state = report_state(node, job_id)
    assert state["state"] == "sent", state
    received = node.hospital.instances_for_study(dataset.StudyInstanceUID)
    assert sorted(instance.Modality for instance in received) == ["OT", "SR"]
    fault_report({"scenario": f"report without {'+'.join(missing)[:40]}", "sent": 1,
                  "delivered": 1, "lost": 0})


def test_a_report_that_cannot_be_built_fails_with_a_reason_and_is_counted(node,
                                                                          tmp_path_factory):
    dataset = chest_dx()
    assert c_store(node.scp_port, dataset) == 0x0000
    job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    # The stored image is damaged after intake (a storage fault): nothing to build a report on.
    (node.storage_root / node.job(job_id).upload_key).write_bytes(b"not dicom any more")
    finish_job(node, job_id)
    state = report_state(node, job_id)
    assert state["state"] == "failed" and state["permanent"] is True, state
    assert "could not be built" in state["reason"]
    client = redis.Redis.from_url(node.redis.url)
    assert client.zscore("cxr:pacs_report:pending", job_id) is None
    # The gateway's /metrics shows the counts of every sender, and the alert rules use them.
    gateway = start_gateway(tmp_path_factory.mktemp("metrics"), node.redis.url)
    try:
        text = gateway.metrics_text()
    finally:
        gateway.stop()
    failed = re.search(r'^cxr_pacs_reports_finished\{state="failed"\} (\S+)$', text, re.M)
    assert failed is not None and float(failed.group(1)) >= 1, text[-2000:]
    assert re.search(r"^cxr_pacs_reports_pending \S+$", text, re.M)
    rules = yaml.safe_load((REPO_ROOT / "infra/prometheus/alerts.yml").read_text())
    # The PACS report rules read the gateway's metrics (the live-performance group reads the
    # worker's too: tests/gateway/test_feedback.py checks it against both).
    exprs = [rule["expr"] for group in rules["groups"] if group["name"] == "cxr-pacs-reports"
             for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\b(cxr_[a-z_]+)\b", expr)}
    assert used and all(re.search(rf"^{name}[{{ ]", text, re.M) for name in used), used
    prometheus = yaml.safe_load((REPO_ROOT / "infra/prometheus/prometheus.yml").read_text())
    assert "/etc/prometheus/alerts.yml" in prometheus["rule_files"]


# --- 4. a permanent defect is reported as permanent ----------------------------------------


MALFORMED = {"rle_meta_native_pixels": dicom_attacks.rle_meta_native_pixels,
             "jpeg_meta_native_pixels": dicom_attacks.jpeg_meta_native_pixels,
             "native_meta_encapsulated_pixels": dicom_attacks.native_meta_encapsulated_pixels}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_instance_is_cannot_understand_on_every_route(gateway, node, kind, tmp_path):
    attack = MALFORMED[kind]()
    with gateway.client("alice") as http:
        response = stow(http, attack.data)
        assert response.status_code == 409, response.text
        assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
        mixed = stow(http, attack.data, encode(chest_dx()))
        assert mixed.status_code == 202 and failure_reasons(mixed.json()) == [CANNOT_UNDERSTAND]
        refused = http.post("/v1/predictions", content=upload(attack.data, b"x.dcm").content,
                            headers=upload(attack.data).headers)
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_dicom"
    status = c_store_bytes(node.scp_port, attack.data, attack.transfer_syntax, tmp_path)
    assert status == CANNOT_UNDERSTAND, f"0x{status:04X}"
