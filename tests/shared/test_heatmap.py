"""The Grad-CAM overlay: a valid PNG at a bounded size, colour only where the model looked."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import ObjectNotFoundError
from shared.heatmap import (
    decode_attention,
    display_size,
    encode_attention,
    heatmap_png,
    render_overlay,
)
from shared.imaging import DecodeLimits
from shared.jobs.records import JobRecord
from shared.storage import LocalStorage


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


# ------------------------------------------------- stored attention, overlay drawn on first read


def xray_png(height: int, width: int) -> bytes:
    rows = np.linspace(30, 220, height, dtype=np.float32)[:, np.newaxis]
    cols = np.linspace(0, 20, width, dtype=np.float32)[np.newaxis, :]
    buffer = io.BytesIO()
    Image.fromarray((rows + cols).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def finished_record(storage: LocalStorage, job_id: str = "job-1", *, attention: bool = True):
    storage.put(f"uploads/{job_id}", xray_png(300, 260))
    heat = np.zeros((224, 224), np.float32)
    heat[40:120, 30:90] = 0.9
    if attention:
        storage.put(f"heatmaps/{job_id}.attention.npy", encode_attention(heat))
    return JobRecord(job_id=job_id, client_id="clinic-a", upload_key=f"uploads/{job_id}",
                     heatmap_key=f"heatmaps/{job_id}.png",
                     attention_key=f"heatmaps/{job_id}.attention.npy" if attention else None), heat


def test_the_attention_map_round_trips_at_8_bits():
    heat = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    heat[0, 0], heat[0, 1] = np.nan, 3.0
    stored = decode_attention(encode_attention(heat))
    assert stored.shape == (224, 224) and stored.dtype == np.uint8
    assert stored[0, 0] == 0 and stored[0, 1] == 255
    assert np.abs(stored[1:].astype(float) / 255 - heat[1:]).max() <= 0.5 / 255 + 1e-6
    assert len(encode_attention(heat)) < 60_000  # 224 x 224 bytes and a header


@pytest.mark.parametrize("array", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32),
                                   np.array(["a", "b"], dtype=object)])
def test_anything_but_a_2d_uint8_array_is_refused_as_an_attention_map(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    with pytest.raises(ValueError, match="attention"):
        decode_attention(buffer.getvalue())
    with pytest.raises(ValueError, match="attention"):
        decode_attention(b"\x89PNG not a NumPy file")


def test_first_read_draws_the_same_overlay_as_drawing_it_at_once_and_keeps_it(tmp_path):
    storage = LocalStorage(tmp_path)
    record, heat = finished_record(storage)
    gray = np.asarray(Image.open(io.BytesIO(storage.get(record.upload_key))))
    png = heatmap_png(storage, record, DecodeLimits(), max_side=200)
    assert png == render_overlay(gray, heat, max_side=200)
    assert decode_png(png).shape == (200, 173, 3)
    assert storage.get(record.heatmap_key) == png
    storage.delete(record.attention_key)  # a later read needs only the kept overlay
    assert heatmap_png(storage, record, DecodeLimits(), max_side=200) == png


def test_an_upload_the_caller_already_read_is_not_read_again(tmp_path):
    storage = LocalStorage(tmp_path)
    record, heat = finished_record(storage)
    upload = storage.get(record.upload_key)
    storage.delete(record.upload_key)
    gray = np.asarray(Image.open(io.BytesIO(upload)))
    png = heatmap_png(storage, record, DecodeLimits(), 200, upload=upload)
    assert png == render_overlay(gray, heat, max_side=200)


def test_an_overlay_written_before_attention_maps_existed_is_served_as_is(tmp_path):
    storage = LocalStorage(tmp_path)
    record, _ = finished_record(storage, attention=False)
    storage.put(record.heatmap_key, b"\x89PNG an older job's overlay")
    assert heatmap_png(storage, record, DecodeLimits(), 1024) == b"\x89PNG an older job's overlay"


def test_no_overlay_and_no_attention_map_is_not_found(tmp_path):
    storage = LocalStorage(tmp_path)
    record, _ = finished_record(storage, attention=False)
    with pytest.raises(ObjectNotFoundError):
        heatmap_png(storage, record, DecodeLimits(), 1024)
    with pytest.raises(ObjectNotFoundError):
        heatmap_png(storage, record.model_copy(update={"heatmap_key": None}), DecodeLimits(),
                    1024)
