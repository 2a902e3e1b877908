"""STOW-RS writes its results only into the study the instance came from, against the real
gateway, the DICOM node's report sender and a hospital PACS (pynetdicom SCP), sharing Redis and
storage as a deployment does.

`POST /dicomweb/studies/{study}` (PS3.18's form naming the target study) did not exist: a client
could not say which study it stores into, and the service wrote its SR and heatmap into whatever
study the instance named. Now a part whose Study Instance UID is not the path's study is refused
with a failure entry (Failure Reason 0xC409) and makes no job; a matching part is stored, and
its SR and heatmap reach the hospital PACS in the instance's own study and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid

from shared.dicom_intake.receive import encode, instance_job_id
from tests.pacs.conftest import PacsNode, start_node, stop_node
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


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[PacsNode]:
    started = start_node(tmp_path_factory.mktemp("stow-study"), model_server_target=None,
                         destination_allows=["CXR"])
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
