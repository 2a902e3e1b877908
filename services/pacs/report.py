"""The DICOM objects sent back for a result: a Comprehensive 3D SR and a Secondary Capture;
for a refused film, a short SR notice that it was not analysed and why.

Both live in the original study (the PACS's Study Instance UID), in new series of their own, and
reference the original image. Their UIDs are derived from the job id, so a retried send delivers
the same instances again instead of duplicates. The SR is UNVERIFIED (no human signed it) and names
the algorithm: model name, version, and a device UID derived from both, so it changes whenever the
model version does.

Their Patient and General Study attributes are the original ones when the job's re-identification
key is readable (`shared.reidentification`, looked up at send time), so the PACS files them into
the patient's study; without a key they are the stored, de-identified copy's.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from shared.contract import MODEL_NAME
from shared.jobs.records import JobRecord
from shared.reidentification import FIELDS as REIDENTIFIED_FIELDS
from shared.schemas import PredictionResult, Scope
from shared.scope import REASON_TEXT, describe

REPORT_TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
NO_PNEUMONIA = hd.sr.CodedConcept("17621005", "SCT", "Normal")
ALGORITHM_NAME = hd.sr.CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = hd.sr.CodedConcept("111003", "DCM", "Algorithm Version")
SOURCE_IMAGE = hd.sr.CodedConcept("260753009", "SCT", "Source")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
# Local codes ("99" prefix: a private coding scheme, PS3.16 8.2) for what no standard code names.
PROBABILITY = hd.sr.CodedConcept("CXR001", "99CXR", "Pneumonia probability")
THRESHOLD = hd.sr.CodedConcept("CXR002", "99CXR", "Decision threshold")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
# The pneumonia subtype, for a PNEUMONIA answer (SNOMED CT findings).
SUBTYPE = hd.sr.CodedConcept("CXR006", "99CXR", "Pneumonia subtype")
SUBTYPES = {"bacterial": hd.sr.CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
            "viral": hd.sr.CodedConcept("75570004", "SCT", "Viral pneumonia")}
# The operating point that decided: whose threshold it is and who calibrated it.
OPERATING_POINT_SITE = hd.sr.CodedConcept("CXR007", "99CXR", "Operating point site")
CALIBRATED_BY = hd.sr.CodedConcept("CXR008", "99CXR", "Threshold calibrated by")
# Scope: the statement, and one coded reason each (code values: shared.contract's reason codes).
CODING_SCHEME = "99CXR"
SCOPE = hd.sr.CodedConcept("CXR003", CODING_SCHEME, "Validated population")
SCOPE_REASON = hd.sr.CodedConcept("CXR004", CODING_SCHEME, "Outside validated population")
NOT_ANALYSED = hd.sr.CodedConcept("CXR005", CODING_SCHEME, "Not analysed: out of scope")
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
# Type 2 attributes of the Patient and General Study modules (present, possibly empty) that the
# reports copy from the image; real exports often omit them, which the standard does not allow.
TYPE_2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
# What a de-identified copy says about itself, which re-identified reports must not repeat.
DEIDENTIFICATION_MARKS = ("PatientIdentityRemoved", "DeidentificationMethod",
                          "DeidentificationMethodCodeSequence",
                          "LongitudinalTemporalInformationModified")


@dataclass(frozen=True)
class ReportInstances:
    structured_report: Dataset
    secondary_capture: Dataset


def device_uid(model_name: str, version: int) -> str:
    """The algorithm's Device Observer UID: one per model name and version."""
    return generate_uid(entropy_srcs=["cxr-device", model_name, str(version)])


def report_uid(job_id: str, part: str) -> str:
    return generate_uid(entropy_srcs=["cxr-report", job_id, part])


def reference_dataset(record: JobRecord, stored_dicom: bytes,
                      identifiers: Mapping[str, str] | None = None) -> Dataset:
    """The stored copy of the received image, under the UIDs the PACS knows it by; with
    `identifiers` (the job's re-identification key), under its original patient and study too.
    """
    dataset = dcmread(io.BytesIO(stored_dicom))
    uids = record.extra["dicom"]
    dataset.StudyInstanceUID = uids["study_instance_uid"]
    dataset.SeriesInstanceUID = uids["series_instance_uid"]
    dataset.SOPInstanceUID = uids["sop_instance_uid"]
    dataset.SOPClassUID = uids["sop_class_uid"]
    if identifiers is not None:
        reidentify(dataset, identifiers)
    for keyword in TYPE_2_COPIED:
        if keyword not in dataset:
            setattr(dataset, keyword, None)  # an empty value, as type 2 allows
    return dataset


def reidentify(dataset: Dataset, identifiers: Mapping[str, str]) -> None:
    """Put the original patient and study identifiers back (`shared.reidentification.FIELDS`);
    the copy no longer claims to be de-identified."""
    for keyword in REIDENTIFIED_FIELDS:
        value = identifiers.get(keyword) or None
        if keyword == "StudyInstanceUID" and value is None:
            continue  # type 1: the job record's original UID stays
        setattr(dataset, keyword, value)
    for keyword in DEIDENTIFICATION_MARKS:
        if keyword in dataset:
            delattr(dataset, keyword)


def summary(result: PredictionResult) -> str:
    relation = ">=" if result.label == "PNEUMONIA" else "<"
    finding = result.label
    if result.label == "PNEUMONIA" and result.subtype:
        finding = f"{result.label} ({result.subtype})"
    point = result.operating_point
    calibrated = (f" (operating point of site {point.site}, calibrated by {point.calibrated_by})"
                  if point is not None else "")
    return (f"{finding}: pneumonia probability {result.pneumonia_probability:.4f} "
            f"{relation} threshold {result.threshold:.4f}{calibrated}; model {result.model.name} "
            f"version {result.model.version}. Unverified AI result, {NOT_FOR_CLINICAL_USE}.")


def decision_items(result: PredictionResult) -> list[hd.sr.ContentItem]:
    """The subtype of a PNEUMONIA answer, and the operating point that decided (site, who
    calibrated its threshold), where the result names them."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = []
    if result.label == "PNEUMONIA" and result.subtype in SUBTYPES:
        items.append(hd.sr.CodeContentItem(SUBTYPE, SUBTYPES[result.subtype],
                                           relationship_type=contains))
    point = result.operating_point
    if point is not None:
        items += [hd.sr.TextContentItem(OPERATING_POINT_SITE, point.site,
                                        relationship_type=contains),
                  hd.sr.TextContentItem(CALIBRATED_BY, point.calibrated_by,
                                        relationship_type=contains)]
    return items


def structured_report(record: JobRecord, ref: Dataset, manufacturer: str) -> Dataset:
    result = record.result
    assert result is not None
    model = result.model
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    modifier = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model.name, model.version), name=model.name,
            manufacturer_name=manufacturer, model_name=f"{model.name} v{model.version}"),
    )
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    root.ContentSequence = hd.sr.ContentSequence([
        *observer,
        hd.sr.TextContentItem(ALGORITHM_NAME, model.name, relationship_type=modifier),
        hd.sr.TextContentItem(ALGORITHM_VERSION, str(model.version), relationship_type=modifier),
        hd.sr.CodeContentItem(FINDING, PNEUMONIA if result.label == "PNEUMONIA" else NO_PNEUMONIA,
                              relationship_type=contains),
        hd.sr.NumContentItem(PROBABILITY, result.pneumonia_probability, NO_UNITS,
                             relationship_type=contains),
        *decision_items(result),
        hd.sr.NumContentItem(THRESHOLD, result.threshold, NO_UNITS, relationship_type=contains),
        hd.sr.TextContentItem(COMMENT, summary(result), relationship_type=contains),
        *scope_items(result.scope),
        hd.sr.ImageContentItem(SOURCE_IMAGE, ref.SOPClassUID, ref.SOPInstanceUID,
                               relationship_type=contains),
    ])
    return hd.sr.Comprehensive3DSR(
        evidence=[ref], content=root, series_instance_uid=report_uid(record.job_id, "sr-series"),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=report_uid(record.job_id, "sr"),
        instance_number=1, manufacturer=manufacturer, is_complete=True, is_final=False,
        is_verified=False, series_description=f"AI pneumonia result - {NOT_FOR_CLINICAL_USE}",
    )


def scope_statement(scope: Scope | None) -> str:
    """The scope of an answered film in words (the SR's statement)."""
    if scope is None:
        return "Scope not assessed (result made before scope screening)."
    if scope.in_validated_population:
        return "Within the population the model was validated on."
    return ("OUTSIDE the population the model was validated on: "
            f"{describe(scope.reasons)}. Read the result with caution.")


def _reason_code(reason: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(reason, CODING_SCHEME, REASON_TEXT[reason][:64])


def scope_items(scope: Scope | None) -> list[hd.sr.ContentItem]:
    """The scope statement and one coded item per reason (local codes: the contract's)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(SCOPE, scope_statement(scope), relationship_type=contains)]
    for reason in scope.reasons if scope is not None else ():
        items.append(hd.sr.CodeContentItem(SCOPE_REASON, _reason_code(reason),
                                           relationship_type=contains))
    return items


def screening_observer(manufacturer: str) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["cxr-device", MODEL_NAME, "screening"]),
            name=f"{MODEL_NAME} screening", manufacturer_name=manufacturer),
    )


def refusal_notice(record: JobRecord, ref: Dataset, manufacturer: str) -> Dataset:
    """A short SR for a refused film: not analysed, and why (coded reasons and words)."""
    failure = record.failure
    assert failure is not None
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    reasons = [str(reason) for reason in failure.reasons or ()]
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    root.ContentSequence = hd.sr.ContentSequence([
        *screening_observer(manufacturer),
        hd.sr.CodeContentItem(FINDING, NOT_ANALYSED, relationship_type=contains),
        *(hd.sr.CodeContentItem(SCOPE_REASON, _reason_code(reason), relationship_type=contains)
          for reason in reasons),
        hd.sr.TextContentItem(COMMENT, f"NOT ANALYSED. {failure.message} {NOT_FOR_CLINICAL_USE}.",
                              relationship_type=contains),
        hd.sr.ImageContentItem(SOURCE_IMAGE, ref.SOPClassUID, ref.SOPInstanceUID,
                               relationship_type=contains),
    ])
    return hd.sr.Comprehensive3DSR(
        evidence=[ref], content=root, series_instance_uid=report_uid(record.job_id, "sr-series"),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=report_uid(record.job_id, "sr"),
        instance_number=1, manufacturer=manufacturer, is_complete=True, is_final=False,
        is_verified=False,
        series_description=f"AI pneumonia: not analysed - {NOT_FOR_CLINICAL_USE}",
    )


def build_refusal_notice(record: JobRecord, stored_dicom: bytes, manufacturer: str,
                         identifiers: Mapping[str, str] | None = None) -> Dataset:
    return refusal_notice(record, reference_dataset(record, stored_dicom, identifiers),
                          manufacturer)


def heatmap_capture(record: JobRecord, ref: Dataset, heatmap_png: bytes,
                    manufacturer: str) -> Dataset:
    pixels = np.asarray(Image.open(io.BytesIO(heatmap_png)).convert("RGB"), dtype=np.uint8)
    return hd.sc.SCImage.from_ref_dataset(
        ref, pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=tuple(ref.get("PatientOrientation")
                                                               or ("L", "F")),
        series_instance_uid=report_uid(record.job_id, "sc-series"),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=report_uid(record.job_id, "sc"),
        instance_number=1, manufacturer=manufacturer,
        series_description=f"Grad-CAM heatmap - {NOT_FOR_CLINICAL_USE}",
    )


def build_report(record: JobRecord, stored_dicom: bytes, heatmap_png: bytes,
                 manufacturer: str, identifiers: Mapping[str, str] | None = None
                 ) -> ReportInstances:
    ref = reference_dataset(record, stored_dicom, identifiers)
    return ReportInstances(structured_report(record, ref, manufacturer),
                           heatmap_capture(record, ref, heatmap_png, manufacturer))
