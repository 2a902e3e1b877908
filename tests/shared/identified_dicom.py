"""Chest DX instances carrying a patient identifier in every attribute class PS3.15 E.1-1 names.

Names, IDs, dates and times, addresses and locations, free text, UIDs, nested sequences, private
tags, an overlay with a label, and the order attributes (Requested Procedure ID, Placer Order
Number, Service Episode ID, Current Patient Location). Each value is unique to its instance, so a
search of stored bytes and log lines for it finds nothing by chance. `KEPT` lists what the model
and the screening need, which de-identification must leave as it was.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests.pacs.studies import chest_dx

_COUNTER = itertools.count(1)

# What the model, the screening and the report need, never touched by de-identification.
KEPT = ("PixelData", "Rows", "Columns", "PhotometricInterpretation", "BitsStored",
        "PixelSpacing", "RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth",
        "Modality", "BodyPartExamined", "ViewPosition", "PatientAge", "SOPClassUID")

# Attributes each holding one identifier value (text), by the class of identifier they are.
NAMES = ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
         "NameOfPhysiciansReadingStudy", "RequestingPhysician", "PatientBirthName",
         "PatientMotherBirthName", "ResponsiblePerson", "PhysiciansOfRecord",
         "OtherPatientNames")
IDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "IssuerOfPatientID",
       "AdmissionID", "RequestedProcedureID", "PlacerOrderNumberImagingServiceRequest",
       "FillerOrderNumberImagingServiceRequest", "ServiceEpisodeID", "DeviceSerialNumber",
       "StationName", "PerformedProcedureStepID", "MedicalRecordLocator")
PLACES = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
          "PatientAddress", "PatientTelephoneNumbers", "CurrentPatientLocation",
          "ReferringPhysicianAddress")
TEXTS = ("StudyDescription", "SeriesDescription", "ImageComments", "AdditionalPatientHistory",
         "PatientComments", "ProtocolName", "RequestedProcedureDescription",
         "PerformedProcedureStepDescription", "AdmittingDiagnosesDescription")
DATES = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
         "PerformedProcedureStepStartDate", "InstanceCreationDate")
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


@dataclass
class IdentifiedInstance:
    dataset: Dataset
    # attribute (or "where:attribute" for nested and private ones) -> the identifying value
    identifiers: dict[str, str]

    @property
    def original_uids(self) -> dict[str, str]:
        return {keyword: str(self.dataset[keyword].value) for keyword in UIDS}

    def found_in(self, data: bytes | str) -> list[str]:
        """Which identifier values occur in `data` (as text: names, IDs, dates, UIDs)."""
        text = data if isinstance(data, str) else data.decode("latin-1")
        return [where for where, value in self.identifiers.items() if value in text]


def _date(serial: int, year: int) -> str:
    return f"{year}{(serial % 12) + 1:02d}{(serial % 27) + 1:02d}"


def identified_chest_dx(label: str = "PNEUMONIA") -> IdentifiedInstance:
    """A frontal chest DX full of identifiers, each value unique to this call."""
    serial = next(_COUNTER)
    tag = f"{serial % 100:02d}{np.random.default_rng().integers(10**5):05d}"
    ds = chest_dx(label=label)
    ids: dict[str, str] = {}

    def put(keyword: str, value: str, dataset: Dataset = ds, where: str = "") -> None:
        setattr(dataset, keyword, value)
        ids[f"{where}{keyword}"] = value

    for index, keyword in enumerate(NAMES):
        put(keyword, f"Qzname{index}{tag}^Given{tag}")
    for index, keyword in enumerate(IDS):
        put(keyword, f"ID{index}X{tag}")
    for index, keyword in enumerate(PLACES):
        put(keyword, f"Pl{index}-{tag}")
    for index, keyword in enumerate(TEXTS):
        put(keyword, f"Text{index} about Qzname{tag}")
    for index, keyword in enumerate(DATES):
        put(keyword, _date(serial + index, 1931 + index))
    put("AcquisitionDateTime", f"{_date(serial, 1951)}101112")
    for keyword in UIDS:
        ids[keyword] = str(ds[keyword].value)
    # nested: the order, the referenced study and patient, a source image and other patient IDs
    request = Dataset()
    put("RequestedProcedureID", f"RqN{tag}", request, "RequestAttributesSequence:")
    put("ScheduledProcedureStepID", f"SpN{tag}", request, "RequestAttributesSequence:")
    put("AccessionNumber", f"AcN{tag}", request, "RequestAttributesSequence:")
    ds.RequestAttributesSequence = Sequence([request])
    other = Dataset()
    put("PatientID", f"OpN{tag}", other, "OtherPatientIDsSequence:")
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    put("ReferencedSOPInstanceUID", generate_uid(), source, "SourceImageSequence:")
    ds.SourceImageSequence = Sequence([source])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    put("ReferencedSOPInstanceUID", generate_uid(), study_ref, "ReferencedStudySequence:")
    ds.ReferencedStudySequence = Sequence([study_ref])
    operator = Dataset()
    put("PersonName", f"Qznested{tag}^Operator", operator, "OperatorIdentificationSequence:")
    ds.OperatorIdentificationSequence = Sequence([operator])
    # private tags, the way vendors hide names and MRNs
    block = ds.private_block(0x0029, "HOSPITAL PRIVATE", create=True)
    block.add_new(0x10, "LO", f"PrivMrn{tag}")
    block.add_new(0x11, "PN", f"Qzprivate{tag}^Name")
    ids["private:0029,1010"], ids["private:0029,1011"] = f"PrivMrn{tag}", f"Qzprivate{tag}^Name"
    # an overlay whose label names the patient; the pixels say they carry no burned-in text
    rows, columns = int(ds.Rows), int(ds.Columns)
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", columns)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60001500, "LO", f"OverlayLabel{tag}")
    ds.add_new(0x60003000, "OW", np.packbits(np.zeros(rows * columns, np.uint8)).tobytes())
    ids["overlay:6000,1500"] = f"OverlayLabel{tag}"
    ds.BurnedInAnnotation = "NO"
    # kept: what the model and the screening read
    ds.PatientAge, ds.PatientSex = "045Y", "F"
    ds.PixelSpacing = [0.139, 0.139]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 128, 256
    return IdentifiedInstance(ds, ids)
