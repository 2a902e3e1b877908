"""decode_xray refuses what is not a usable X-ray with a typed error and an actionable status."""

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import RLELossless

from shared.errors import (
    CorruptImageError,
    CXRError,
    EmptyUploadError,
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedFormatError,
)
from shared.imaging import DecodeLimits, decode_xray
from tests.shared.xray_files import (
    dicom_bytes,
    encode,
    gradient,
    jpeg_bytes,
    png_bytes,
    png_with_declared_size,
    raw_implicit_dicom_bytes,
    xray_dataset,
)


def test_empty_upload():
    with pytest.raises(EmptyUploadError) as caught:
        decode_xray(b"")
    assert caught.value.http_status == 400


def test_text_file_named_png_is_not_an_image():
    with pytest.raises(NotAnImageError) as caught:
        decode_xray(b"Patient: Jane Doe\nFindings: clear lungs.\n")
    assert caught.value.http_status == 415
    assert caught.value.code == "not_an_image"


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes_are_not_an_image(seed):
    with pytest.raises(NotAnImageError):
        decode_xray(np.random.default_rng(seed).bytes(4096))


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_behind_a_dicom_like_element_header_are_refused(seed):
    """Looks like the start of a raw DICOM file, then garbage: never decoded, never a crash."""
    data = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + np.random.default_rng(seed).bytes(4096)
    with pytest.raises(ImageError):
        decode_xray(data)


@pytest.mark.parametrize(
    ("image_format", "name"),
    [("GIF", "GIF"), ("TIFF", "TIFF"), ("BMP", "BMP"), ("WEBP", "WebP")],
)
def test_other_image_formats_are_unsupported(image_format, name):
    data = encode(Image.fromarray(gradient()), image_format)
    with pytest.raises(UnsupportedFormatError, match=name) as caught:
        decode_xray(data)
    assert caught.value.http_status == 415


def test_pdf_is_unsupported_and_named():
    with pytest.raises(UnsupportedFormatError, match="PDF"):
        decode_xray(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n")


def test_tiny_image_is_too_small():
    with pytest.raises(ImageTooSmallError) as caught:
        decode_xray(png_bytes(gradient(32, 200)))
    assert caught.value.http_status == 422
    assert "64" in caught.value.message


def test_declared_forty_thousand_square_png_is_refused_from_its_header():
    data = png_with_declared_size(40000, 40000)
    assert len(data) < 200
    with pytest.raises(ImageTooLargeError) as caught:
        decode_xray(data)
    assert caught.value.http_status == 413


def test_pixel_limit_comes_from_the_limits():
    data = png_bytes(gradient(200, 300))
    assert decode_xray(data, DecodeLimits(max_pixels=60_000)).pixels.shape == (200, 300)
    with pytest.raises(ImageTooLargeError):
        decode_xray(data, DecodeLimits(max_pixels=59_999))


def test_byte_limit_is_checked_before_decoding():
    data = png_bytes(gradient())
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_xray(data, DecodeLimits(max_bytes=len(data) - 1))


def test_limits_default_to_the_settings(monkeypatch):
    from shared.settings import get_settings

    monkeypatch.setenv("CXR_MIN_IMAGE_SIDE", "200")
    get_settings.cache_clear()
    try:
        with pytest.raises(ImageTooSmallError):
            decode_xray(png_bytes(gradient(150, 300)))
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("maker", [png_bytes, jpeg_bytes], ids=["png", "jpeg"])
def test_truncated_files_are_corrupt(maker):
    rng = np.random.default_rng(0)
    data = maker(rng.integers(0, 256, (300, 300), dtype=np.uint8))  # noise: compresses badly
    with pytest.raises(CorruptImageError) as caught:
        decode_xray(data[: len(data) // 2])
    assert caught.value.http_status == 422


def test_png_with_a_damaged_chunk_is_corrupt():
    data = bytearray(png_bytes(gradient()))
    data[40] ^= 0xFF  # inside IDAT: the CRC no longer matches
    with pytest.raises(CorruptImageError):
        decode_xray(bytes(data))


def test_jpeg_signature_followed_by_garbage_is_corrupt():
    with pytest.raises(CorruptImageError):
        decode_xray(b"\xff\xd8\xff\xe0" + bytes(200))


def test_every_refusal_is_a_cxr_error_with_a_readable_message():
    for data in (b"", b"hello", b"GIF89a" + bytes(20), png_with_declared_size(10, 10)):
        with pytest.raises(CXRError) as caught:
            decode_xray(data)
        assert 400 <= caught.value.http_status < 500
        assert len(caught.value.message) > 20
        assert not caught.value.transient


def _valid_files() -> dict[str, bytes]:
    stored = gradient(96, 128, 0, 4095, np.uint16)
    return {
        "png": png_bytes(gradient()),
        "jpeg": jpeg_bytes(gradient()),
        "dicom": dicom_bytes(xray_dataset(stored, WindowCenter=1000, WindowWidth=500)),
        "dicom-rle": dicom_bytes(xray_dataset(stored), RLELossless),
        "dicom-raw": raw_implicit_dicom_bytes(xray_dataset(stored)),
    }


@pytest.mark.parametrize("name", list(_valid_files()))
def test_damaged_files_give_a_typed_error_or_a_valid_image(name):
    """Flipped bytes (mostly in the headers) and cuts: never an untyped exception."""
    original = _valid_files()[name]
    rng = np.random.default_rng(7)
    for case in range(80):
        data = bytearray(original)
        window = 400 if case % 2 else len(data)
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, min(window, len(data))))] = int(rng.integers(0, 256))
        if case % 5 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            decoded = decode_xray(bytes(data))
        except CXRError as error:
            assert 400 <= error.http_status < 500
            continue
        assert decoded.pixels.dtype == np.uint8
        assert decoded.pixels.ndim == 2
        assert min(decoded.pixels.shape) >= 64
