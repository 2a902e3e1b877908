"""The SR, Secondary Capture and refusal notice built from a de-identified stored copy, with and
without the job's re-identification key, checked against their IODs (no processes)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from cryptography.fernet import Fernet
from PIL import Image
from pydicom.dataset import Dataset

from services.pacs.report import build_refusal_notice, build_report
from shared.dicom_intake.deidentify import deidentify
from shared.dicom_intake.receive import encode, original_uids
from shared.jobs.records import JobRecord, JobStatus
from shared.reidentification import FIELDS, ReidentificationKeys
from shared.schemas import (
    ClassProbabilities,
    Failure,
    ModelRef,
    PredictionResult,
    Scope,
    SiteOperatingPoint,
)
from shared.settings import SharedSettings
from tests.pacs.dicom_validation import iod_problems
from tests.shared.identified_dicom import IdentifiedInstance, identified_chest_dx

JOB_ID = "dicom-" + "a" * 40
# What the SR and Secondary Capture must carry back for the PACS to file them.
FILED_BY = ("PatientID", "PatientName", "AccessionNumber", "StudyInstanceUID")


def _heatmap() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _record(instance: IdentifiedInstance, *, refused: bool = False) -> JobRecord:
    record = JobRecord(job_id=JOB_ID, client_id="MODALITY", upload_key=f"uploads/{JOB_ID}",
                       source="dicom",
                       extra={"dicom": {**original_uids(instance.dataset), "route": "c-store",
                                        "calling_ae_title": "MODALITY"}})
    if refused:
        record.status = JobStatus.FAILED
        record.failure = Failure(code="not_a_chest_radiograph", message="A lateral view.",
                                 reasons=["lateral_view"])
        return record
    record.status = JobStatus.SUCCEEDED
    record.result = PredictionResult(
        label="PNEUMONIA", pneumonia_probability=0.91,
        class_probabilities=ClassProbabilities(normal=0.09, bacterial=0.71, viral=0.2),
        subtype="bacterial", threshold=0.42, model=ModelRef(name="cxr-pneumonia", version=3),
        operating_point=SiteOperatingPoint(site="north", threshold=0.42, calibrated_by="site"),
        scope=Scope(in_validated_population=False, reasons=["adult"]))
    return record


def _identifiers(tmp_path, instance: IdentifiedInstance) -> dict[str, str]:
    """The identifiers as the report sender gets them: recorded, then looked up."""
    keys = ReidentificationKeys.from_settings(SharedSettings(
        reid_keys=Fernet.generate_key().decode(), reid_storage_root=str(tmp_path)))
    assert keys is not None
    keys.record(JOB_ID, encode(instance.dataset))  # from the bytes, as an upload does
    found = keys.lookup(JOB_ID)
    assert found is not None
    return found


def _items(sr: Dataset) -> dict[str, Dataset]:
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}


def test_with_the_key_the_sr_and_capture_carry_the_original_identifiers_and_validate(tmp_path):
    instance = identified_chest_dx()
    original = instance.dataset
    identifiers = _identifiers(tmp_path, instance)
    assert set(identifiers) == set(FIELDS)
    report = build_report(_record(instance), encode(deidentify(original)), _heatmap(),
                          "cxr-pneumonia", identifiers)

    for made in (report.structured_report, report.secondary_capture):
        assert iod_problems(made) == []
        for keyword in (*FILED_BY, "PatientBirthDate", "StudyDate", "StudyID"):
            assert str(made[keyword].value) == str(original[keyword].value), keyword
        assert "PatientIdentityRemoved" not in made
        assert "DeidentificationMethod" not in made
        # nothing else of the original came back: other names, IDs, places, private tags
        leaked = [where for where in instance.found_in(str(made))
                  if where not in FIELDS and where not in ("SeriesInstanceUID", "SOPInstanceUID")]
        assert leaked == []

    items = _items(report.structured_report)
    assert items["Algorithm Name"].TextValue == "cxr-pneumonia"
    assert items["Algorithm Version"].TextValue == "3"
    assert items["Pneumonia subtype"].ConceptCodeSequence[0].CodeMeaning == "Bacterial pneumonia"
    assert items["Operating point site"].TextValue == "north"
    assert items["Threshold calibrated by"].TextValue == "site"
    threshold = items["Decision threshold"].MeasuredValueSequence[0].NumericValue
    assert float(threshold) == pytest.approx(0.42)
    assert items["Validated population"].TextValue.startswith("OUTSIDE")
    assert "bacterial" in items["Comment"].TextValue and "site north" in items["Comment"].TextValue


def test_without_a_key_they_carry_the_stored_copy_and_still_validate():
    instance = identified_chest_dx()
    report = build_report(_record(instance), encode(deidentify(instance.dataset)), _heatmap(),
                          "cxr-pneumonia", None)
    for made in (report.structured_report, report.secondary_capture):
        assert iod_problems(made) == []
        assert made.StudyInstanceUID == instance.dataset.StudyInstanceUID  # the job's record
        assert not made.PatientID and not made.PatientName and not made.AccessionNumber
        assert made.get("PatientIdentityRemoved", "YES") == "YES"  # never a false NO
        assert [where for where in instance.found_in(str(made))
                if where not in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")] == []


def test_the_refusal_notice_carries_the_original_identifiers_and_validates(tmp_path):
    instance = identified_chest_dx()
    notice = build_refusal_notice(_record(instance, refused=True),
                                  encode(deidentify(instance.dataset)), "cxr-pneumonia",
                                  _identifiers(tmp_path, instance))
    assert iod_problems(notice) == []
    for keyword in FILED_BY:
        assert str(notice[keyword].value) == str(instance.dataset[keyword].value), keyword


@pytest.mark.parametrize("break_it", [
    lambda ds: delattr(ds, "PatientID"),  # type 2, absent
    lambda ds: setattr(ds, "SOPInstanceUID", ""),  # type 1, empty
    lambda ds: setattr(ds, "StudyDate", "yesterday"),  # not a DA value
    lambda ds: delattr(ds, "ContentSequence"),  # an SR without content
], ids=["no-patient-id", "empty-sop-instance-uid", "bad-date", "no-content"])
def test_the_validation_finds_a_broken_object(break_it):
    instance = identified_chest_dx()
    sr = build_report(_record(instance), encode(deidentify(instance.dataset)), _heatmap(),
                      "cxr-pneumonia").structured_report
    break_it(sr)
    assert iod_problems(sr) != []
