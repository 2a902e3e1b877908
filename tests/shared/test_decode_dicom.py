"""decode_xray on DICOM: LUTs, windows, MONOCHROME1, compression, and files that are not X-rays."""

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGLSLossless, RLELossless

from shared.errors import (
    CorruptImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidDicomError,
    UnsupportedFormatError,
)
from shared.imaging import decode_xray
from tests.shared.xray_files import (
    dicom_bytes,
    dicom_with_foreign_compression,
    dicom_with_jpeg_baseline,
    dicom_without_pixels,
    gradient,
    jpeg_bytes,
    raw_implicit_dicom_bytes,
    xray_dataset,
)


def _stored_gradient():
    return gradient(96, 128, 0, 4095, np.uint16)


def test_monochrome2_without_window_uses_the_full_range():
    decoded = decode_xray(dicom_bytes(xray_dataset(_stored_gradient())))
    assert decoded.format == "dicom"
    assert decoded.pixels.shape == (96, 128)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels[0, 0] == 0
    assert decoded.pixels[0, -1] == 255
    assert np.all(np.diff(decoded.pixels[0].astype(int)) >= 0)


def test_rescale_then_window_is_applied():
    stored = _stored_gradient()
    dataset = xray_dataset(stored, RescaleSlope=2, RescaleIntercept=-1024,
                           WindowCenter=1000, WindowWidth=2000)
    pixels = decode_xray(dicom_bytes(dataset)).pixels[0]
    values = stored[0].astype(float) * 2 - 1024  # the modality LUT
    assert np.all(pixels[values <= 0] == 0)  # below the window: black
    assert np.all(pixels[values >= 2000] == 255)  # above the window: white
    inside = (values > 50) & (values < 1950)
    expected = (values[inside] / 2000) * 255
    assert np.abs(pixels[inside] - expected).max() <= 1.5
    assert np.all(np.diff(pixels.astype(int)) >= 0)


def test_a_narrower_window_gives_more_contrast():
    stored = _stored_gradient()
    wide = decode_xray(dicom_bytes(xray_dataset(stored, WindowCenter=2048, WindowWidth=4096)))
    narrow = decode_xray(dicom_bytes(xray_dataset(stored, WindowCenter=2048, WindowWidth=1024)))
    assert narrow.pixels.std() > wide.pixels.std()


def test_monochrome1_is_inverted():
    stored = _stored_gradient()
    mono1 = decode_xray(dicom_bytes(xray_dataset(stored, "MONOCHROME1"))).pixels
    mono2 = decode_xray(dicom_bytes(xray_dataset(stored, "MONOCHROME2"))).pixels
    # MONOCHROME1: the highest stored value is displayed darkest.
    assert mono1[0, 0] == 255
    assert mono1[0, -1] == 0
    assert np.all(np.diff(mono1[0].astype(int)) <= 0)
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_monochrome1_inverts_after_the_window():
    stored = _stored_gradient()
    dataset = xray_dataset(stored, "MONOCHROME1", WindowCenter=1000, WindowWidth=1000)
    pixels = decode_xray(dicom_bytes(dataset)).pixels[0]
    assert np.all(pixels[stored[0] <= 500] == 255)
    assert np.all(pixels[stored[0] >= 1500] == 0)


def test_voi_lut_sequence_is_applied():
    stored = _stored_gradient()
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 8]
    step = np.array([0] * 2048 + [200] * 2048, dtype="<u2")  # a step at 2048, 8-bit output
    lut.LUTData = step.tobytes()
    dataset = xray_dataset(stored)
    dataset.VOILUTSequence = Sequence([lut])
    pixels = decode_xray(dicom_bytes(dataset)).pixels[0]
    assert np.all(pixels[stored[0] < 2048] == 0)
    assert np.all(pixels[stored[0] >= 2048] == 255)  # the LUT's highest entry is white


@pytest.mark.parametrize("lut_vr", ["OW", "US"])
def test_voi_lut_ramp_keeps_order_and_clips_outside_its_entries(lut_vr):
    stored = _stored_gradient()
    lut = Dataset()
    lut.LUTDescriptor = [1024, 1000, 12]  # maps stored values 1000..2023 onto 0..4092
    ramp = np.arange(1024, dtype="<u2") * 4
    lut.add_new(0x00283006, lut_vr, ramp.tobytes() if lut_vr == "OW" else ramp.tolist())
    dataset = xray_dataset(stored)
    dataset.VOILUTSequence = Sequence([lut])
    pixels = decode_xray(dicom_bytes(dataset)).pixels[0]
    assert np.all(pixels[stored[0] <= 1000] == 0)
    assert np.all(pixels[stored[0] >= 2023] == 255)
    assert np.all(np.diff(pixels.astype(int)) >= 0)
    inside = (stored[0] > 1000) & (stored[0] < 2023)
    assert len(np.unique(pixels[inside])) > 20


def test_sixteen_bit_signed_pixels():
    stored = gradient(96, 128, -2000, 30000, np.int16)
    decoded = decode_xray(dicom_bytes(xray_dataset(stored, bits_stored=16)))
    assert decoded.pixels[0, 0] == 0
    assert decoded.pixels[0, -1] == 255
    assert decoded.metadata["bit_depth"] == 16


def test_rgb_dicom_becomes_gray():
    gray = gradient(96, 128)
    dataset = xray_dataset(np.stack([gray] * 3, axis=-1), "RGB", 8)
    decoded = decode_xray(dicom_bytes(dataset))
    np.testing.assert_array_equal(decoded.pixels, gray)


def test_metadata_carries_the_identifiers():
    dataset = xray_dataset(_stored_gradient())
    metadata = decode_xray(dicom_bytes(dataset)).metadata
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert metadata[keyword] == str(getattr(dataset, keyword))
    assert metadata["Modality"] == "DX"
    assert metadata["BodyPartExamined"] == "CHEST"
    assert metadata["ViewPosition"] == "PA"
    assert metadata["PhotometricInterpretation"] == "MONOCHROME2"
    assert (metadata["width"], metadata["height"]) == (128, 96)
    assert metadata["transfer_syntax"] == "Explicit VR Little Endian"


def test_metadata_carries_no_patient_data():
    dataset = xray_dataset(_stored_gradient(), PatientName="Doe^Jane", PatientID="12345",
                           PatientBirthDate="19800101", AccessionNumber="A1")
    metadata = decode_xray(dicom_bytes(dataset)).metadata
    assert not [key for key in metadata if key.startswith("Patient") or key == "AccessionNumber"]
    assert not {"Doe^Jane", "12345", "19800101", "A1"} & {str(value) for value in metadata.values()}


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless],
                         ids=lambda uid: uid.name)
def test_lossless_compressed_dicom_decodes_like_the_uncompressed_file(transfer_syntax):
    stored = _stored_gradient()
    plain = decode_xray(dicom_bytes(xray_dataset(stored)))
    compressed = decode_xray(dicom_bytes(xray_dataset(stored), transfer_syntax))
    assert compressed.metadata["transfer_syntax"] == transfer_syntax.name
    np.testing.assert_array_equal(compressed.pixels, plain.pixels)


def test_undecodable_compression_names_the_transfer_syntax():
    with pytest.raises(UnsupportedFormatError, match="MPEG2") as caught:
        decode_xray(dicom_with_foreign_compression(MPEG2MPML))
    assert caught.value.http_status == 415


def test_raw_dicom_without_preamble_is_accepted():
    stored = _stored_gradient()
    data = raw_implicit_dicom_bytes(xray_dataset(stored))
    assert data[128:132] != b"DICM"
    decoded = decode_xray(data)
    assert decoded.format == "dicom"
    with_preamble = decode_xray(dicom_bytes(xray_dataset(stored)))
    np.testing.assert_array_equal(decoded.pixels, with_preamble.pixels)


def test_dicom_without_pixel_data_is_refused_with_a_reason():
    with pytest.raises(InvalidDicomError, match="without pixel data") as caught:
        decode_xray(dicom_without_pixels())
    assert caught.value.http_status == 422
    assert caught.value.code == "invalid_dicom"


def test_multi_frame_dicom_is_refused():
    frames = np.stack([_stored_gradient()] * 3)
    dataset = xray_dataset(frames)
    assert dataset.NumberOfFrames == 3
    with pytest.raises(InvalidDicomError, match="3 frames"):
        decode_xray(dicom_bytes(dataset))


def test_truncated_dicom_is_corrupt():
    data = dicom_bytes(xray_dataset(_stored_gradient()))
    with pytest.raises(CorruptImageError):
        decode_xray(data[: len(data) - 5000])


def test_dicom_declaring_huge_dimensions_is_refused_before_decoding():
    dataset = xray_dataset(gradient(96, 128, 0, 4095, np.uint16))
    dataset.Rows = 40000
    dataset.Columns = 40000  # the pixel data stays tiny: nothing is decoded
    with pytest.raises(ImageTooLargeError):
        decode_xray(dicom_bytes(dataset))


def test_tiny_dicom_is_refused():
    with pytest.raises(ImageTooSmallError):
        decode_xray(dicom_bytes(xray_dataset(gradient(32, 32, 0, 4095, np.uint16))))


def test_palette_colour_dicom_is_unsupported():
    dataset = xray_dataset(gradient(96, 128), bits_stored=8)
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(UnsupportedFormatError, match="PALETTE COLOR"):
        decode_xray(dicom_bytes(dataset))


def test_jpeg_baseline_gray_dicom_decodes_like_the_jpeg_itself():
    jpeg = jpeg_bytes(gradient(96, 128))
    data = dicom_with_jpeg_baseline(jpeg, "MONOCHROME2", 96, 128)
    decoded = decode_xray(data)
    assert decoded.metadata["transfer_syntax"] == "JPEG Baseline (Process 1)"
    np.testing.assert_array_equal(decoded.pixels, decode_xray(jpeg).pixels)


def test_jpeg_baseline_colour_dicom_becomes_gray():
    gray = gradient(96, 128)
    jpeg = jpeg_bytes(np.stack([gray] * 3, axis=-1))
    decoded = decode_xray(dicom_with_jpeg_baseline(jpeg, "YBR_FULL_422", 96, 128, samples=3))
    assert decoded.pixels.shape == (96, 128)
    assert np.abs(decoded.pixels.astype(int) - gray).max() <= 6
