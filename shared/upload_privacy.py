"""What an HTTP upload is stored as: DICOM de-identified the way C-STORE and STOW-RS do it,
JPEG and PNG without their metadata segments and chunks (`shared.imaging.strip`).

The gateway calls `stored_upload` after the upload has been decoded and screened, so only a
usable image reaches it; the pixels are never touched, only the identifying metadata around them.
"""

from __future__ import annotations

import io
from dataclasses import replace

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.dicom_intake.deidentify import deidentify
from shared.errors import CorruptImageError
from shared.imaging import DecodedImage
from shared.imaging.strip import strip_metadata

# The decoded metadata that comes from the header and changes with de-identification.
_UID_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def stored_upload(data: bytes, decoded: DecodedImage) -> tuple[bytes, DecodedImage]:
    """The bytes to store for an upload, and `decoded` with the stored copy's header facts."""
    if decoded.format in ("jpeg", "png"):
        return strip_metadata(data, decoded.format), decoded
    if decoded.format != "dicom":
        return data, decoded
    try:
        stored = deidentify(_read(data))
        stored_bytes = _encode(stored)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for odd values
        raise CorruptImageError(
            f"The DICOM header cannot be de-identified ({type(exc).__name__}: {exc}); "
            "export the image again."
        ) from exc
    metadata = {key: value for key, value in decoded.metadata.items()
                if key not in _UID_KEYWORDS}
    for keyword in _UID_KEYWORDS:
        if stored.get(keyword):
            metadata[keyword] = str(stored[keyword].value)
    return stored_bytes, replace(decoded, metadata=metadata)


def deidentified_dicom(data: bytes) -> bytes:
    """`data` as a de-identified DICOM file: unchanged when its header says it already is
    (Patient Identity Removed YES, as every copy `deidentify` made), de-identified otherwise
    (an instance a PACS sent while `CXR_PACS_KEEP_IDENTIFIERS` was on)."""
    dataset = _read(data)
    if str(dataset.get("PatientIdentityRemoved", "")).upper() == "YES":
        return data
    return _encode(deidentify(dataset))


def _read(data: bytes) -> Dataset:
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    dataset = dcmread(io.BytesIO(data), force=not has_preamble)
    meta = getattr(dataset, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # A raw file without a meta group: keep the encoding it was written in.
        implicit_vr, _little_endian = dataset.original_encoding
        dataset.file_meta = FileMetaDataset(meta or FileMetaDataset())
        dataset.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit_vr
                                               else ExplicitVRLittleEndian)
    return dataset


def _encode(dataset: Dataset) -> bytes:
    """A Part 10 file in the dataset's own transfer syntax; an upload may lack its SOP UIDs."""
    meta = dataset.file_meta
    for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                  ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        if dataset.get(keyword):
            setattr(meta, meta_keyword, dataset[keyword].value)
        elif meta_keyword in meta:
            del meta[meta_keyword]
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=bool(dataset.get("SOPClassUID")
                                                        and dataset.get("SOPInstanceUID")))
    return buffer.getvalue()
