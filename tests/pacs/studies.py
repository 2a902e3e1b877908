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


def photograph(side: int = 256) -> np.ndarray:
    """A colour picture (RGB uint8): a sample film's shapes in strong, unequal colours."""
    film = sample_pixels("NORMAL", side=side)
    return np.stack([film, np.roll(film, side // 5, axis=1), 255 - film], axis=2)


def chest_dx(*, view: str | None = "PA", body_part: str | None = "CHEST",
             study_uid: str | None = None, label: str = "PNEUMONIA", age: str | None = None,
             pixels: np.ndarray | None = None) -> Dataset:
    """A Digital X-Ray (For Presentation) instance of a sample image, 8-bit MONOCHROME2 (or RGB
    when `pixels` has three channels); `age` sets Patient's Age (e.g. '045Y')."""
    pixels = sample_pixels(label) if pixels is None else pixels
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
    if age is not None:
        ds.PatientAge = age
    ds.Rows, ds.Columns = pixels.shape[:2]
    if pixels.ndim == 3:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.set_original_encoding(False, True)
    return ds
