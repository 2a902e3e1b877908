"""to_model_input: the one resize both training and serving use."""

import numpy as np
import pytest

from shared.imaging import decode_xray, to_model_input
from tests.shared.xray_files import gradient, jpeg_bytes, png_bytes


def test_shape_and_dtype():
    model_input = to_model_input(gradient(300, 500))
    assert model_input.shape == (224, 224, 1)
    assert model_input.dtype == np.uint8


def test_other_sizes():
    assert to_model_input(gradient(300, 500), size=64).shape == (64, 64, 1)


def test_same_bytes_give_identical_arrays():
    data = jpeg_bytes(np.random.default_rng(1).integers(0, 256, (480, 640), dtype=np.uint8))
    first = to_model_input(decode_xray(data).pixels)
    second = to_model_input(decode_xray(data).pixels)
    np.testing.assert_array_equal(first, second)


def test_non_square_input_is_squashed_not_cropped():
    pixels = np.zeros((300, 900), np.uint8)
    pixels[:, 600:] = 255  # the right third bright
    model_input = to_model_input(pixels)[:, :, 0]
    np.testing.assert_array_equal(model_input, to_model_input(pixels.copy())[:, :, 0])
    assert model_input[:, :140].max() == 0
    assert model_input[:, 160:].min() == 255
    bright_columns = np.flatnonzero(model_input.mean(axis=0) > 127)
    assert abs(bright_columns[0] - 224 * 2 / 3) <= 1


def test_model_sized_input_passes_through_unchanged():
    pixels = np.random.default_rng(2).integers(0, 256, (224, 224), dtype=np.uint8)
    np.testing.assert_array_equal(to_model_input(pixels)[:, :, 0], pixels)
    np.testing.assert_array_equal(to_model_input(pixels[:, :, None])[:, :, 0], pixels)


def test_downscaling_averages_instead_of_sampling():
    """A one-pixel checkerboard shrinks to mid-gray; nearest-neighbour sampling would keep 0/255."""
    board = (np.indices((896, 896)).sum(axis=0) % 2 * 255).astype(np.uint8)
    model_input = to_model_input(board)
    assert np.abs(model_input.astype(int) - 127.5).max() <= 2


def test_decoded_png_and_jpeg_of_the_same_image_agree():
    pixels = gradient(512, 512)
    from_png = to_model_input(decode_xray(png_bytes(pixels)).pixels).astype(int)
    from_jpeg = to_model_input(decode_xray(jpeg_bytes(pixels)).pixels).astype(int)
    assert np.abs(from_png - from_jpeg).max() <= 3


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.float32), np.zeros((10, 10, 3), np.uint8), np.zeros(10, np.uint8)],
    ids=["float", "rgb", "1-d"],
)
def test_wrong_inputs_are_refused(bad):
    with pytest.raises(ValueError):
        to_model_input(bad)
