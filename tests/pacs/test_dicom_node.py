"""The DICOM node end to end: a modality C-STOREs chest X-rays, jobs run through the real worker
and model server, and the SR + Secondary Capture arrive at the hospital PACS."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from services.pacs.report import NOT_FOR_CLINICAL_USE, device_uid
from shared.dicom_intake.receive import instance_job_id
from shared.jobs.records import JobStatus
from tests.pacs.peers import MODALITY_AE, c_store, modality_ae
from tests.pacs.studies import PATIENT, chest_dx, photograph
from tests.support.procs import wait_until

JOB_TIMEOUT_S = 120


def wait_for_job(node, job_id: str, status: JobStatus = JobStatus.SUCCEEDED):
    wait_until(lambda: (node.job(job_id) or False) and node.job(job_id).status == status,
               JOB_TIMEOUT_S, f"job {job_id} {status}", node.scp)
    return node.job(job_id)


def wait_for_report_state(node, job_id: str, state: str) -> dict:
    def reached() -> bool:
        record = node.job(job_id)
        return record is not None and record.extra.get("pacs_report", {}).get("state") == state
    wait_until(reached, JOB_TIMEOUT_S, f"report of {job_id} {state}", node.sender)
    return node.job(job_id).extra["pacs_report"]


def audit_lines(node) -> list[dict]:
    return [json.loads(line) for line in node.audit_log.read_text().splitlines()]


def test_c_echo_answers(pacs_node):
    assoc = modality_ae().associate("127.0.0.1", pacs_node.scp_port, ae_title="CXR")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def test_unknown_calling_ae_title_is_rejected(pacs_node):
    assoc = modality_ae("STRANGER").associate("127.0.0.1", pacs_node.scp_port, ae_title="CXR")
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    # rejected permanent, by the service user, "calling AE title not recognised"
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)


def test_study_goes_to_the_model_and_the_report_comes_back(pacs_node):
    dataset = chest_dx()
    assert c_store(pacs_node.scp_port, dataset) == 0x0000
    job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    record = wait_for_job(pacs_node, job_id)
    assert record.source == "dicom" and record.client_id == "MODALITY"
    assert record.extra["dicom"]["study_instance_uid"] == dataset.StudyInstanceUID
    assert record.extra["dicom"]["sop_instance_uid"] == dataset.SOPInstanceUID

    state = wait_for_report_state(pacs_node, job_id, "sent")
    instances = pacs_node.hospital.instances_for_study(dataset.StudyInstanceUID)
    by_modality = {ds.Modality: ds for ds in instances}
    assert set(by_modality) == {"SR", "OT"}
    sr, sc = by_modality["SR"], by_modality["OT"]
    assert {sr.SOPInstanceUID, sc.SOPInstanceUID} == {state["sr_sop_instance_uid"],
                                                      state["sc_sop_instance_uid"]}
    result = record.result
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    items = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}
    assert items["Algorithm Name"].TextValue == result.model.name
    assert items["Algorithm Version"].TextValue == str(result.model.version)
    assert device_uid(result.model.name, result.model.version) == items["Device Observer UID"].UID
    probability = items["Pneumonia probability"].MeasuredValueSequence[0].NumericValue
    threshold = items["Decision threshold"].MeasuredValueSequence[0].NumericValue
    assert float(probability) == pytest.approx(result.pneumonia_probability, abs=1e-6)
    assert float(threshold) == pytest.approx(result.threshold, abs=1e-6)
    finding = items["Finding"].ConceptCodeSequence[0].CodeMeaning
    assert finding == ("Pneumonia" if result.label == "PNEUMONIA" else "Normal")
    assert result.label in items["Comment"].TextValue
    assert result.scope.in_validated_population and result.scope.reasons == []
    assert items["Validated population"].TextValue.startswith("Within")
    source = items["Source"].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == dataset.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == dataset.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    assert NOT_FOR_CLINICAL_USE in sc.SeriesDescription
    assert sc.StudyInstanceUID == dataset.StudyInstanceUID
    assert sc.SeriesInstanceUID not in (dataset.SeriesInstanceUID, sr.SeriesInstanceUID)
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.ndim == 3


def test_stored_copy_is_deidentified(pacs_node):
    dataset = chest_dx()
    assert c_store(pacs_node.scp_port, dataset) == 0x0000
    record = pacs_node.job(instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store"))
    stored = dcmread(io.BytesIO((pacs_node.storage_root / record.upload_key).read_bytes()))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                    "ReferringPhysicianName"):
        assert not stored.get(keyword), keyword
    assert "OtherPatientIDs" not in stored
    assert stored.InstitutionName != dataset.InstitutionName  # X/Z/D: a dummy value
    raw = (pacs_node.storage_root / record.upload_key).read_bytes()
    for value in PATIENT.values():
        assert len(value) == 1 or value.encode() not in raw, value
    assert stored.PatientIdentityRemoved == "YES"
    assert stored.SOPInstanceUID != dataset.SOPInstanceUID
    assert stored.StudyInstanceUID != dataset.StudyInstanceUID
    assert dataset.SOPInstanceUID.encode() not in raw
    assert stored.pixel_array.shape == dataset.pixel_array.shape


def test_same_instance_twice_from_one_sender_makes_one_job(pacs_node):
    dataset = chest_dx()
    assert c_store(pacs_node.scp_port, dataset) == 0x0000
    assert c_store(pacs_node.scp_port, dataset) == 0x0000
    job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    wait_for_job(pacs_node, job_id)
    dicom_jobs = [path for path in (pacs_node.storage_root / "jobs").iterdir()
                  if dataset.SOPInstanceUID in path.read_text()]
    assert [path.name for path in dicom_jobs] == [f"{job_id}.json"]
    stores = [line for line in audit_lines(pacs_node)
              if line.get("sop_instance_uid") == dataset.SOPInstanceUID]
    assert [(line["client"], line.get("duplicate", False)) for line in stores] == [
        ("MODALITY", False), ("MODALITY", True)]
    assert {line["address"] for line in stores} == {"127.0.0.1"}  # the sender's address


def code_value(item) -> str:
    """A coded item's code value (a code longer than 16 characters is a Long Code Value)."""
    concept = item.ConceptCodeSequence[0]
    return str(concept.get("CodeValue") or concept.LongCodeValue)


def sr_items(sr) -> dict[str, list]:
    items: dict[str, list] = {}
    for item in sr.ContentSequence:
        items.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item)
    return items


@pytest.mark.parametrize(("options", "reasons"), [
    ({"view": "LL"}, ["lateral_view"]),
    ({"view": "LAT", "body_part": None}, ["lateral_view"]),
    ({"body_part": "HAND"}, ["not_chest_radiograph"]),
    ({"pixels": photograph()}, ["colour_image"]),  # tagged chest PA, pixels a photograph
    ({"pixels": np.zeros((256, 256), np.uint8)}, ["blank_image"]),
], ids=["lateral", "lateral-no-body-part", "hand", "photograph-tagged-chest", "blank"])
def test_a_refused_film_is_not_analysed_and_the_pacs_is_told_why(pacs_node, options, reasons):
    dataset = chest_dx(**options)
    assert c_store(pacs_node.scp_port, dataset) == 0x0000  # delivered: the PACS must not resend
    job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    record = wait_for_job(pacs_node, job_id, JobStatus.FAILED)
    assert record.failure.code == "not_a_chest_radiograph"
    assert [str(reason) for reason in record.failure.reasons] == reasons
    assert record.result is None and record.heatmap_key is None

    state = wait_for_report_state(pacs_node, job_id, "sent")
    instances = pacs_node.hospital.instances_for_study(dataset.StudyInstanceUID)
    assert [ds.Modality for ds in instances] == ["SR"]  # a notice, no heatmap capture
    notice = instances[0]
    assert notice.SOPInstanceUID == state["sr_sop_instance_uid"]
    assert "not analysed" in notice.SeriesDescription
    items = sr_items(notice)
    finding = items["Finding"][0].ConceptCodeSequence[0]
    assert (finding.CodeValue, finding.CodingSchemeDesignator) == ("CXR005", "99CXR")
    assert [code_value(item) for item in items["Outside validated population"]] == reasons
    assert items["Comment"][0].TextValue.startswith("NOT ANALYSED")
    assert "Pneumonia probability" not in items
    source = items["Source"][0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == dataset.SOPInstanceUID


def test_an_adult_film_is_answered_with_the_flag_in_the_result_and_the_sr(pacs_node):
    dataset = chest_dx(age="045Y")
    assert c_store(pacs_node.scp_port, dataset) == 0x0000
    job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
    record = wait_for_job(pacs_node, job_id)
    assert record.result.scope.in_validated_population is False
    assert [str(reason) for reason in record.result.scope.reasons] == ["adult"]

    wait_for_report_state(pacs_node, job_id, "sent")
    sr = next(ds for ds in pacs_node.hospital.instances_for_study(dataset.StudyInstanceUID)
              if ds.Modality == "SR")
    items = sr_items(sr)
    assert items["Validated population"][0].TextValue.startswith("OUTSIDE")
    assert "adult" in items["Validated population"][0].TextValue
    assert [code_value(item) for item in items["Outside validated population"]] == ["adult"]


def test_report_waits_for_a_destination_that_is_down_then_arrives(pacs_node):
    pacs_node.hospital.stop()
    dataset = chest_dx(study_uid=generate_uid())
    try:
        assert c_store(pacs_node.scp_port, dataset) == 0x0000
        job_id = instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")
        wait_for_job(pacs_node, job_id)
        wait_until(lambda: pacs_node.job(job_id).extra["pacs_report"].get("attempts", 0) >= 2,
                   JOB_TIMEOUT_S, "two failed report attempts", pacs_node.sender)
        state = pacs_node.job(job_id).extra["pacs_report"]
        assert state["state"] == "pending" and "no association" in state["last_error"]
    finally:
        pacs_node.hospital.start()
    state = wait_for_report_state(pacs_node, job_id, "sent")
    assert state["attempts"] >= 3
    received = pacs_node.hospital.instances_for_study(dataset.StudyInstanceUID)
    assert sorted(ds.Modality for ds in received) == ["OT", "SR"]


def test_an_instance_without_pixels_is_refused_with_cannot_understand(pacs_node):
    dataset = chest_dx()
    del dataset.PixelData
    assert c_store(pacs_node.scp_port, dataset) == 0xC000
    assert pacs_node.job(instance_job_id(dataset.SOPInstanceUID, MODALITY_AE, "c-store")) is None
    wait_until(lambda: any(line.get("sop_instance_uid") == dataset.SOPInstanceUID
                           for line in audit_lines(pacs_node)), 10, "audit line")
    line = next(line for line in audit_lines(pacs_node)
                if line.get("sop_instance_uid") == dataset.SOPInstanceUID)
    assert (line["status"], line["code"]) == (422, "invalid_dicom")
