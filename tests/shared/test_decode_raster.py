"""decode_xray on JPEG and PNG files of every mode a PACS export or a phone photo produces."""

import numpy as np
import pytest
from PIL import Image

from shared.imaging import decode_xray
from tests.shared.xray_files import gradient, jpeg_bytes, png_bytes


def _quadrants(height=96, width=128):
    """Dark everywhere except a bright top-left quadrant: shows where a rotation moved things."""
    pixels = np.full((height, width), 30, np.uint8)
    pixels[: height // 2, : width // 2] = 220
    return pixels


def test_gray_png_round_trips_exactly():
    pixels = gradient()
    decoded = decode_xray(png_bytes(pixels))
    assert decoded.format == "png"
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert decoded.metadata["width"] == 128
    assert decoded.metadata["height"] == 96
    assert decoded.metadata["bit_depth"] == 8


def test_sixteen_bit_png_is_mapped_by_its_own_range():
    pixels = gradient(low=1000, high=5000, dtype=np.uint16)
    data = png_bytes(pixels)
    assert data[24] == 16  # IHDR bit depth: the file really is 16-bit
    decoded = decode_xray(data)
    assert decoded.metadata["bit_depth"] == 16
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.min() == 0
    assert decoded.pixels.max() == 255
    assert np.all(np.diff(decoded.pixels[0].astype(int)) >= 0)
    expected = np.rint((pixels.astype(float) - 1000) * 255 / 4000).astype(np.uint8)
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_gray_jpeg_decodes_close_to_its_source():
    pixels = gradient()
    decoded = decode_xray(jpeg_bytes(pixels))
    assert decoded.format == "jpeg"
    assert decoded.pixels.shape == (96, 128)
    assert np.abs(decoded.pixels.astype(int) - pixels).max() <= 4


def test_rgb_jpeg_becomes_gray():
    gray = gradient()
    decoded = decode_xray(jpeg_bytes(np.stack([gray] * 3, axis=-1)))
    assert decoded.pixels.ndim == 2
    assert np.abs(decoded.pixels.astype(int) - gray).max() <= 6


@pytest.mark.parametrize(
    ("orientation", "bright_corner", "shape"),
    [(1, "top_left", (96, 128)), (3, "bottom_right", (96, 128)), (6, "top_right", (128, 96)),
     (8, "bottom_left", (128, 96))],
)
def test_jpeg_exif_orientation_is_applied(orientation, bright_corner, shape):
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_xray(jpeg_bytes(_quadrants(), exif=exif.tobytes()))
    assert decoded.pixels.shape == shape
    assert decoded.metadata["exif_orientation"] == orientation
    height, width = shape
    corners = {
        "top_left": decoded.pixels[: height // 2, : width // 2],
        "top_right": decoded.pixels[: height // 2, width // 2:],
        "bottom_left": decoded.pixels[height // 2:, : width // 2],
        "bottom_right": decoded.pixels[height // 2:, width // 2:],
    }
    brightest = max(corners, key=lambda name: corners[name].mean())
    assert brightest == bright_corner


def test_rgb_png_uses_luma():
    pixels = np.zeros((80, 100, 3), np.uint8)
    pixels[:, :50] = (255, 0, 0)
    pixels[:, 50:] = (90, 90, 90)
    decoded = decode_xray(png_bytes(pixels))
    assert decoded.pixels[0, 0] == 76  # ITU-R 601 luma of pure red
    assert decoded.pixels[0, 99] == 90  # equal channels keep their value


def test_rgba_png_drops_alpha():
    gray = gradient(80, 100)
    rgba = np.stack([gray, gray, gray, np.zeros_like(gray)], axis=-1)  # fully transparent
    decoded = decode_xray(png_bytes(rgba))
    np.testing.assert_array_equal(decoded.pixels, gray)


def test_gray_alpha_png_keeps_the_gray_channel():
    gray = gradient(80, 100)
    image = Image.merge("LA", [Image.fromarray(gray), Image.new("L", (100, 80), 128)])
    decoded = decode_xray(png_bytes(image))
    np.testing.assert_array_equal(decoded.pixels, gray)


def test_palette_png_is_looked_up_then_made_gray():
    indices = np.zeros((80, 100), np.uint8)
    indices[:, 50:] = 1
    image = Image.frombytes("P", (100, 80), indices.tobytes())
    image.putpalette([10, 10, 10, 200, 200, 200] + [0, 0, 0] * 254)
    decoded = decode_xray(png_bytes(image))
    assert decoded.pixels[0, 0] == 10
    assert decoded.pixels[0, 99] == 200


def test_palette_png_with_transparency_decodes():
    image = Image.frombytes("P", (100, 80), bytes(8000))
    image.putpalette([60, 60, 60] + [0, 0, 0] * 255)
    decoded = decode_xray(png_bytes(image, transparency=0))
    assert np.all(decoded.pixels == 60)


def test_one_bit_png_becomes_black_and_white():
    image = Image.fromarray(gradient(80, 100) > 127)
    decoded = decode_xray(png_bytes(image))
    assert set(np.unique(decoded.pixels)) == {0, 255}
    assert decoded.metadata["bit_depth"] == 1
