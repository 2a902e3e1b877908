"""Chest DX instances made with pydicom from the sample JPEGs, with patient identifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "sample"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-123456", "PatientBirthDate": "19700101",
           "PatientSex": "F", "AccessionNumber": "ACC-42", "ReferringPhysicianName": "Who^Doctor",
           "InstitutionName": "General Hospital", "OtherPatientIDs": "SSN-999"}


def sample_pixels(label: str = "PNEUMONIA", index: int = 0, side: int = 256) -> np.ndarray:
    path = sorted((SAMPLES / label).iterdir())[index]
    return np.asarray(Image.open(path).convert("L").resize((side, side)), dtype=np.uint8)


def chest_dx(*, view: str | None = "PA", body_part: str | None = "CHEST",
             study_uid: str | None = None, label: str = "PNEUMONIA") -> Dataset:
    """A Digital X-Ray (For Presentation) instance of a sample image, 8-bit MONOCHROME2."""
    pixels = sample_pixels(label)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "101010", "S1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.Manufacturer = "Test Modality"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.set_original_encoding(False, True)
    return ds
