"""DICOM decoding with pydicom: one frame, modality LUT, VOI LUT or window, MONOCHROME1 inverted."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicom
from pydicom.pixels import apply_modality_lut, apply_windowing, get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared.errors import CorruptImageError, CXRError, InvalidDicomError, UnsupportedFormatError
from shared.imaging.dicom_scan import check_file
from shared.imaging.header_hints import header_reasons
from shared.imaging.intensity import rescale_to_uint8
from shared.imaging.limits import DecodedImage, DecodeLimits
from shared.imaging.pixel_checks import pixel_stats

log = logging.getLogger("cxr.imaging")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
# Identifiers and acquisition facts only: no patient data, since metadata lands in job records.
_METADATA_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "BodyPartExamined", "ViewPosition", "PhotometricInterpretation",
)


def decode_dicom(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """Decode a single-frame DICOM image to 2-D uint8, 0 black .. 255 white."""
    try:
        return _decode(data, limits)
    except CXRError:
        raise
    except Exception as exc:  # noqa: BLE001
        # pydicom parses element values lazily, so a damaged file can raise almost any error type
        # (NotImplementedError for an unknown VR, struct.error, ...) long after dcmread returned.
        # The parser's words stay in the log: they describe our code, not the sender's file.
        log.info("DICOM file refused as damaged: %s: %s", type(exc).__name__, exc)
        raise CorruptImageError(
            "The DICOM file is damaged (an element cannot be read); export it again."
        ) from exc


def _decode(data: bytes, limits: DecodeLimits) -> DecodedImage:
    check_file(data, limits)
    dataset = _read(data)
    _check_is_single_image(dataset)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    limits.check_dimensions(columns, rows)
    limits.check_decode_memory(columns, rows, int(dataset.get("SamplesPerPixel", 1) or 1),
                               int(dataset.get("BitsAllocated", 16) or 16))
    transfer_syntax = _transfer_syntax(dataset)
    _check_decodable(transfer_syntax)
    check_pixel_encoding(dataset)
    try:
        stored = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the pixel data is unusable
        log.info("DICOM pixel data refused: %s: %s", type(exc).__name__, exc)
        raise CorruptImageError(
            f"The DICOM pixel data ({transfer_syntax.name}) cannot be decoded; "
            "export the image again."
        ) from exc
    photometric = str(dataset.PhotometricInterpretation)
    rgb = None
    if photometric in _MONOCHROME:
        pixels = _display_gray(stored, dataset)
    else:
        rgb = _as_uint8_rgb(stored)
        pixels = np.asarray(Image.fromarray(rgb).convert("L"))
    metadata = _metadata(dataset, transfer_syntax)
    metadata.update(width=columns, height=rows)
    return DecodedImage(pixels=pixels, format="dicom", metadata=metadata,
                        pixel_stats=pixel_stats(pixels, rgb),
                        header_reasons=header_reasons(dataset))


def _read(data: bytes) -> Dataset:
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        dataset = dcmread(io.BytesIO(data), force=not has_preamble)
    except (PydicomInvalidDicom, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        log.info("DICOM file unreadable: %s: %s", type(exc).__name__, exc)
        raise CorruptImageError(
            "The DICOM file cannot be read; it may be truncated. Export it again."
        ) from exc
    if not has_preamble and "SOPClassUID" not in dataset and "PixelData" not in dataset:
        raise CorruptImageError(
            "The file looks like DICOM but holds neither an SOP class nor pixel data; "
            "export it again."
        )
    return dataset


def _check_is_single_image(dataset: Dataset) -> None:
    if "PixelData" not in dataset:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise UnsupportedFormatError(
                "The DICOM image stores floating-point pixels (a parametric map?); send the X-ray."
            )
        raise InvalidDicomError(
            "The file is a DICOM object without pixel data (a report or a presentation state?); "
            "send the image itself."
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise InvalidDicomError(
            f"The DICOM object holds {frames} frames (a cine or a multi-frame series); send one "
            "single-frame radiograph."
        )
    missing = [k for k in ("Rows", "Columns", "PhotometricInterpretation") if k not in dataset]
    if missing:
        raise InvalidDicomError(f"The DICOM image lacks {', '.join(missing)}; export it again.")
    photometric = str(dataset.PhotometricInterpretation)
    if photometric not in _MONOCHROME + _COLOUR:
        raise UnsupportedFormatError(
            f"DICOM images with photometric interpretation {photometric} are not accepted; send a "
            "MONOCHROME1, MONOCHROME2 or RGB image."
        )


def check_pixel_encoding(dataset: Dataset) -> None:
    """Refuse pixel data whose encoding contradicts the transfer syntax in the file meta:
    native pixels under a compressed syntax (or fragments under an uncompressed one)."""
    meta = getattr(dataset, "file_meta", None)
    if "PixelData" not in dataset or meta is None or "TransferSyntaxUID" not in meta:
        return
    transfer_syntax = UID(meta.TransferSyntaxUID)
    if not transfer_syntax.is_transfer_syntax:
        return
    encapsulated = dataset["PixelData"].is_undefined_length
    if encapsulated != transfer_syntax.is_encapsulated:
        found = "compressed fragments" if encapsulated else "uncompressed pixels"
        raise InvalidDicomError(
            f"The DICOM file meta declares {transfer_syntax.name or transfer_syntax} but the pixel "
            f"data holds {found}; export the image again.")


def _transfer_syntax(dataset: Dataset) -> UID:
    """The transfer syntax; from the encoding pydicom saw when the file has no meta group."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(meta.TransferSyntaxUID)
    implicit_vr, _little_endian = dataset.original_encoding
    uid = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    if meta is None:
        dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = uid
    return uid


def _check_decodable(transfer_syntax: UID) -> None:
    name = transfer_syntax.name or str(transfer_syntax)
    try:
        available = get_decoder(transfer_syntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        raise UnsupportedFormatError(
            f"The DICOM image is compressed with {name}, which the service cannot decode; send it "
            "uncompressed or as JPEG, JPEG Lossless, JPEG-LS, JPEG 2000 or RLE."
        )


def _display_gray(stored: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Modality LUT, then the first VOI LUT or window, mapped to 0..255; MONOCHROME1 inverted."""
    values = apply_modality_lut(stored, dataset)
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
        little_endian = dataset.original_encoding[1] is not False
        values, low, high = _apply_voi_lut_item(values, dataset.VOILUTSequence[0], little_endian)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        low, high = _window_output_range(values, dataset)
        values = apply_windowing(values, dataset, index=0)
    else:
        low, high = float(values.min()), float(values.max())
    pixels = rescale_to_uint8(values, low, high)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels


def _apply_voi_lut_item(values: np.ndarray, item: Dataset,
                        little_endian: bool) -> tuple[np.ndarray, float, float]:
    """Look `values` up in a VOI LUT; returns the output and the LUT's actual output range.

    Not pydicom's `apply_voi_lut`: pydicom 3.0 computes the LUT indices in the LUT's own dtype,
    so an 8-bit LUT with more than 256 entries wraps its indices and shows the wrong image.
    The output range comes from the LUT's entries, not its declared bit depth, because some
    devices declare 16 bits for 12-bit data (viewers such as Horos do the same).
    """
    entries, first_mapped, _bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):
        lut = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")
    else:
        lut = np.atleast_1d(np.asarray(data))  # VR US: already a list of numbers
    lut = lut[:entries].astype(np.float64)
    index = np.clip(np.rint(values) - first_mapped, 0, len(lut) - 1).astype(np.intp)
    return lut[index], float(lut.min()), float(lut.max())


def _window_output_range(values: np.ndarray, dataset: Dataset) -> tuple[float, float]:
    """pydicom's windowing maps onto a range of its own (from BitsStored and the rescale);
    find it by windowing values far below and above any window."""
    span = float(np.abs(values).max()) + 1e9
    with np.errstate(over="ignore"):  # the sigmoid window overflows exp() at the extremes
        extremes = apply_windowing(np.array([-span, span], dtype=np.float64), dataset, index=0)
    return float(extremes[0]), float(extremes[1])


def _as_uint8_rgb(stored: np.ndarray) -> np.ndarray:
    if stored.dtype == np.uint8:
        return stored
    return rescale_to_uint8(stored, float(stored.min()), float(stored.max()))


def _metadata(dataset: Dataset, transfer_syntax: UID) -> dict[str, Any]:
    metadata: dict[str, Any] = {"format": "dicom", "transfer_syntax": transfer_syntax.name}
    for keyword in _METADATA_KEYWORDS:
        value = dataset.get(keyword)
        if value not in (None, ""):
            metadata[keyword] = str(value)
    metadata["bit_depth"] = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)))
    return metadata
