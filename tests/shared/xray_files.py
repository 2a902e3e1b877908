"""Real PNG, JPEG and DICOM files made on the fly with Pillow and pydicom for the decoder tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

DIGITAL_XRAY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - Presentation
BASIC_TEXT_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"


def gradient(height: int = 96, width: int = 128, low: int = 0, high: int = 255,
             dtype: type = np.uint8) -> np.ndarray:
    """Values rising from left to right, the same on every row."""
    row = np.linspace(low, high, width)
    return np.rint(np.tile(row, (height, 1))).astype(dtype)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _as_image(array_or_image) -> Image.Image:
    if isinstance(array_or_image, Image.Image):
        return array_or_image
    return Image.fromarray(array_or_image)


def png_bytes(array_or_image, **options) -> bytes:
    return encode(_as_image(array_or_image), "PNG", **options)


def jpeg_bytes(array_or_image, quality: int = 95, **options) -> bytes:
    return encode(_as_image(array_or_image), "JPEG", quality=quality, **options)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (a decompression bomb, cheaply)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def xray_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                 **elements) -> Dataset:
    """A digital X-ray dataset holding `pixels` (uncompressed, explicit VR little endian)."""
    dataset = Dataset()
    dataset.SOPClassUID = DIGITAL_XRAY_SOP_CLASS
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Modality = "DX"
    dataset.BodyPartExamined = "CHEST"
    dataset.ViewPosition = "PA"
    dataset.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    return dataset


def dicom_bytes(dataset: Dataset, transfer_syntax: str | None = None) -> bytes:
    """The dataset as a DICOM file (preamble, "DICM", meta group), compressed if asked."""
    if transfer_syntax is not None:
        dataset.compress(transfer_syntax)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raw_implicit_dicom_bytes(dataset: Dataset) -> bytes:
    """The dataset with no preamble and no meta group, implicit VR (as old modalities wrote it)."""
    dataset.file_meta = FileMetaDataset()
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def dicom_without_pixels() -> bytes:
    dataset = Dataset()
    dataset.SOPClassUID = BASIC_TEXT_SR_SOP_CLASS
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "SR"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR_SOP_CLASS
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dicom_bytes(dataset)


def dicom_with_foreign_compression(uid: str) -> bytes:
    """A DICOM file whose encapsulated pixel data claims a transfer syntax we cannot decode."""
    dataset = xray_dataset(gradient(96, 128, 0, 4000, np.uint16))
    return _encapsulated(dataset, b"\x00\x01" * 64, uid)


def dicom_with_jpeg_baseline(jpeg: bytes, photometric: str, rows: int, columns: int,
                             samples: int = 1) -> bytes:
    """A DICOM file carrying a JPEG made by Pillow as its pixel data (JPEG Baseline)."""
    dataset = xray_dataset(np.zeros((rows, columns), np.uint8), bits_stored=8)
    dataset.SamplesPerPixel = samples
    dataset.PhotometricInterpretation = photometric
    if samples == 3:
        dataset.PlanarConfiguration = 0
    return _encapsulated(dataset, jpeg, JPEGBaseline8Bit)


def _encapsulated(dataset: Dataset, fragment: bytes, transfer_syntax: str) -> bytes:
    """The dataset with `fragment` as its one compressed frame, labelled `transfer_syntax`."""
    dataset.PixelData = encapsulate([fragment])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    return dicom_bytes(dataset)
