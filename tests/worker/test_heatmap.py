"""The Grad-CAM overlay: a valid PNG at a bounded size, colour only where the model looked."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.worker.heatmap import display_size, render_overlay


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(int)


def test_keeps_the_original_size_when_small_enough():
    gray = np.full((300, 200), 128, np.uint8)
    pixels = decode_png(render_overlay(gray, np.zeros((224, 224)), max_side=1024))
    assert pixels.shape == (300, 200, 3)


def test_large_images_are_scaled_down_keeping_the_aspect_ratio():
    assert display_size(3000, 2000, 1000) == (667, 1000)
    pixels = decode_png(render_overlay(np.zeros((2000, 1000), np.uint8), np.ones((224, 224)), 500))
    assert pixels.shape == (500, 250, 3)


def test_no_attention_leaves_the_xray_gray_and_attention_adds_red():
    gray = np.full((256, 256), 100, np.uint8)
    heat = np.zeros((224, 224), np.float32)
    heat[:, 112:] = 1.0  # the model looked at the right half only
    pixels = decode_png(render_overlay(gray, heat))
    left, right = pixels[:, :100], pixels[:, -100:]
    assert np.all(left[..., 0] == left[..., 1]) and np.all(left[..., 1] == left[..., 2])
    assert np.abs(left - 100).max() <= 1
    assert right[..., 0].mean() > 150 and right[..., 2].mean() < 60


def test_nan_and_out_of_range_values_do_not_break_the_picture():
    heat = np.array([[np.nan, 2.0], [-1.0, 0.5]], np.float32)
    pixels = decode_png(render_overlay(np.zeros((64, 64), np.uint8), heat))
    assert pixels.shape == (64, 64, 3)


def test_refuses_colour_images():
    with pytest.raises(ValueError, match="2-D"):
        render_overlay(np.zeros((64, 64, 3), np.uint8), np.zeros((8, 8)))
