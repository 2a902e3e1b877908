"""STOW-RS writes its results only into the study the instance came from, against the real
gateway, the DICOM node's report sender and a hospital PACS (pynetdicom SCP), sharing Redis and
storage as a deployment does.

`POST /dicomweb/studies/{study}` (PS3.18's form naming the target study) did not exist: a client
could not say which study it stores into, and the service wrote its SR and heatmap into whatever
study the instance named. Now a part whose Study Instance UID is not the path's study is refused
with a failure entry (Failure Reason 0xC409) and makes no job; a matching part is stored, and
its SR and heatmap reach the hospital PACS in the instance's own study and nowhere else.

Any API key used to be enough to have results written into the hospital's PACS. Now only the
clients in `CXR_PACS_STOW_REPORT_CLIENTS` (here `alice`) are: another client's STOW-RS job ends
its delivery `not_sent` with reason `sender_not_allowed` and nothing reaches the PACS, while
C-STORE jobs (from a modality the node accepts) are sent as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from pydicom.uid import generate_uid

from services.pacs.delivery import SENDER_NOT_ALLOWED
from shared.contract import NOT_A_CHEST_RADIOGRAPH_CODE
from shared.dicom_intake.receive import encode, instance_job_id
from shared.jobs.queue import REPORT_QUEUE, REPORT_STATE_KEY, REPORT_TASK
from shared.report_delivery import OUTCOMES_KEY, PENDING_KEY, note_pending
from shared.schemas import Failure
from tests.pacs.conftest import PacsNode, start_node, stop_node
from tests.pacs.peers import MODALITY_AE, c_store
from tests.pacs.studies import chest_dx
from tests.reliability.test_dicom_intake import (
    FAILED,
    FAILURE_REASON,
    REFERENCED,
    finish_job,
    multipart,
    report_state,
    stow,
)
from tests.support.gateway import GatewayProcess, start_gateway

pytestmark = pytest.mark.slow

STUDY_MISMATCH = 0xC409
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=cxr-attack-boundary'
ALLOWED_CLIENT = "alice"  # the only API client whose STOW-RS results may reach the PACS


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[PacsNode]:
    started = start_node(tmp_path_factory.mktemp("stow-study"), model_server_target=None,
                         destination_allows=["CXR"],
                         env={"CXR_PACS_STOW_REPORT_CLIENTS": ALLOWED_CLIENT})
    yield started
    stop_node(started)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, node) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("stow-study-gateway"), node.redis.url,
                            env={"CXR_STORAGE_ROOT": str(node.storage_root)})
    yield process
    process.stop()


def stow_to(http, study: str, *parts: bytes):
    return http.post(f"/dicomweb/studies/{study}", content=multipart(*parts),
                     headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"})


def reasons(answer: dict) -> list[int]:
    return [item[FAILURE_REASON]["Value"][0] for item in answer.get(FAILED, {}).get("Value", [])]


def test_a_part_of_another_study_is_refused_and_makes_no_job(gateway, node, fault_report):
    own_study, target_study = generate_uid(), generate_uid()
    film = chest_dx(study_uid=own_study)
    with gateway.client("alice") as http:
        refused = stow_to(http, target_study, encode(film))
        assert refused.status_code == 409, refused.text
        assert reasons(refused.json()) == [STUDY_MISMATCH]
        comment = refused.json()[FAILED]["Value"][0]["00080418"]["Value"][0]
        assert "not the study of the request path" in comment
        # Beside a part of the path's study: that one is stored, the other refused (202).
        matching = chest_dx(study_uid=target_study)
        mixed = stow_to(http, target_study, encode(film), encode(matching))
        assert mixed.status_code == 202, mixed.text
        assert reasons(mixed.json()) == [STUDY_MISMATCH]
        assert len(mixed.json()[REFERENCED]["Value"]) == 1
        # A path that is not a UID is refused before any part is read.
        bad = stow_to(http, "1.2.x", encode(film))
        assert bad.status_code == 422, bad.text
    assert node.job(instance_job_id(film.SOPInstanceUID, "alice", "stow-rs")) is None
    assert node.job(instance_job_id(matching.SOPInstanceUID, "alice", "stow-rs")) is not None
    fault_report({"scenario": "stow to another study", "parts": 3, "refused_0xC409": 2,
                  "stored": 1, "5xx": 0})


@pytest.mark.parametrize("route", ["path", "plain"])
def test_the_report_goes_into_the_instances_own_study_only(gateway, node, route, fault_report):
    study = generate_uid()
    film = chest_dx(study_uid=study)
    with gateway.client("alice") as http:
        answer = stow_to(http, study, encode(film)) if route == "path" else \
            stow(http, encode(film))
    assert answer.status_code == 200, answer.text
    job_id = instance_job_id(film.SOPInstanceUID, "alice", "stow-rs")
    finish_job(node, job_id)
    state = report_state(node, job_id)
    assert state["state"] == "sent", state
    sent = {state["sr_sop_instance_uid"], state["sc_sop_instance_uid"]}
    reports = [ds for ds in node.hospital.received if ds.SOPInstanceUID in sent]
    assert sorted(ds.Modality for ds in reports) == ["OT", "SR"]
    assert {ds.StudyInstanceUID for ds in reports} == {study}
    fault_report({"scenario": f"stow report study ({route})", "sent": 1, "delivered": 1,
                  "into_own_study": len(reports)})


def refuse_job(node: PacsNode, job_id: str) -> None:
    """Fail a received job as the worker's scope screen does, then queue its notice."""
    node.jobs.mark_running(job_id)
    node.jobs.mark_failed(job_id, Failure(code=NOT_A_CHEST_RADIOGRAPH_CODE,
                                          message="Not a frontal chest radiograph."))
    node.jobs.set_extra(job_id, REPORT_STATE_KEY, {"state": "pending", "attempts": 0})
    note_pending(redis.Redis.from_url(node.redis.url), job_id)
    producer = Celery("test-producer", broker=node.redis.url, set_as_current=False)
    producer.send_task(REPORT_TASK, args=[job_id], queue=REPORT_QUEUE)
    producer.close()


ENDED = ("sent", "failed", "skipped", "not_sent")


def test_only_an_allowed_clients_stow_results_reach_the_pacs(gateway, node, fault_report):
    studies = {client: generate_uid() for client in ("alice", "bob")}
    films = {client: chest_dx(study_uid=study) for client, study in studies.items()}
    for client, film in films.items():
        with gateway.client(client) as http:
            answer = stow_to(http, studies[client], encode(film))
        assert answer.status_code == 200, answer.text
    jobs = {client: instance_job_id(film.SOPInstanceUID, client, "stow-rs")
            for client, film in films.items()}
    for job_id in jobs.values():
        assert node.job(job_id).extra["dicom"]["route"] == "stow-rs"
        finish_job(node, job_id)
    allowed = report_state(node, jobs["alice"], ENDED)
    refused = report_state(node, jobs["bob"], ENDED)

    assert allowed["state"] == "sent", allowed
    received = node.hospital.instances_for_study(studies["alice"])
    assert sorted(ds.Modality for ds in received) == ["OT", "SR"]
    assert refused["state"] == "not_sent" and refused["reason"] == SENDER_NOT_ALLOWED, refused
    assert refused["route"] == "stow-rs"
    assert node.hospital.instances_for_study(studies["bob"]) == []
    client = redis.Redis.from_url(node.redis.url)
    assert client.zscore(PENDING_KEY, jobs["bob"]) is None  # ended, never pending
    assert int(client.hget(OUTCOMES_KEY, "not_sent") or 0) >= 1
    fault_report({"scenario": "stow report by sender", "clients": 2, "sent": 1,
                  "not_sent_sender_not_allowed": 1, "received_from_refused": 0})


def test_a_refused_film_of_another_client_sends_no_notice(gateway, node):
    study = generate_uid()
    film = chest_dx(study_uid=study)
    with gateway.client("bob") as http:
        assert stow_to(http, study, encode(film)).status_code == 200
    job_id = instance_job_id(film.SOPInstanceUID, "bob", "stow-rs")
    refuse_job(node, job_id)
    state = report_state(node, job_id, ENDED)
    assert state["state"] == "not_sent" and state["reason"] == SENDER_NOT_ALLOWED, state
    assert node.hospital.instances_for_study(study) == []


def test_c_store_results_are_sent_whatever_the_stow_clients(node):
    """A modality's C-STORE job is not an API client's: its report goes as before."""
    film = chest_dx(study_uid=generate_uid())
    assert c_store(node.scp_port, film) == 0x0000
    job_id = instance_job_id(film.SOPInstanceUID, MODALITY_AE, "c-store")
    assert node.job(job_id).extra["dicom"]["route"] == "c-store"
    finish_job(node, job_id)
    state = report_state(node, job_id, ENDED)
    assert state["state"] == "sent", state
    received = node.hospital.instances_for_study(film.StudyInstanceUID)
    assert sorted(ds.Modality for ds in received) == ["OT", "SR"]
