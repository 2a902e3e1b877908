"""The recipe's defences against a new period: histogram equalisation inside the model, random
crops and covered corners during training, the outer-band share of a heatmap, and `--set`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from services.trainer.cli.training import recipe_overrides
from services.trainer.evaluation.metrics import outer_band_mask, outer_band_share
from services.trainer.modeling.augment import (
    AugmentConfig,
    augment_batch,
    corner_mask,
    resample,
)
from services.trainer.modeling.model import HistogramEqualization, build_cnn

STILL = AugmentConfig(rotation_deg=0, shear_deg=0, zoom=(1, 1), translation=0, brightness=0,
                      contrast=(1, 1), gamma=(1, 1), blur_sigma=(0, 0), noise=0)


def test_histogram_equalization_by_hand():
    # levels 0, 0, 100, 200: cdf 2, 3, 4 of 4 pixels; darkest cdf 2 ->
    # 0 -> 0, 100 -> (3 - 2) / (4 - 2) * 255 = 127.5, 200 -> 255
    image = np.array([0, 0, 100, 200], np.float32).reshape(1, 2, 2, 1)
    out = HistogramEqualization()(image).numpy().ravel()
    np.testing.assert_allclose(out, [0.0, 0.0, 127.5, 255.0])


def test_histogram_equalization_rounds_clips_and_keeps_images_apart():
    # image 1: 10.4 -> 10, -3 -> 0, 300 -> 255, 10 -> 10: cdf 0:1, 10:3, 255:4, darkest 1
    # -> 0, (3 - 1) / 3 * 255 = 170, 255, 170; image 2 is flat: all zeros
    images = np.array([[10.4, -3.0, 300.0, 10.0], [50, 50, 50, 50]], np.float32)
    out = HistogramEqualization()(images.reshape(2, 2, 2, 1)).numpy().reshape(2, 4)
    np.testing.assert_allclose(out, [[170.0, 0.0, 255.0, 170.0], [0, 0, 0, 0]], atol=1e-4)


def test_equalization_ignores_increasing_grey_level_maps():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 100, (1, 16, 16, 1)).astype(np.float32)
    lut = np.round(20.0 + 235.0 * (np.arange(100) / 99.0) ** 0.5)  # brighter, gamma 0.5
    assert np.all(np.diff(lut) > 0)
    brighter = lut[image.astype(int)].astype(np.float32)
    equalize = HistogramEqualization()
    np.testing.assert_allclose(equalize(image).numpy(), equalize(brighter).numpy(), atol=1e-4)


def test_model_with_equalization_is_the_same_size_and_differs_only_in_input():
    plain = build_cnn(image_size=32, width=4, equalize=False)
    equalized = build_cnn(image_size=32, width=4, equalize=True)
    assert plain.count_params() == equalized.count_params()
    assert equalized.get_layer("equalize") is not None


def test_corner_mask_covers_only_corners_of_the_drawn_size():
    config = AugmentConfig(erase_corners=1.0, erase_size=(0.25, 0.25))
    mask = corner_mask(tf.constant(2), 16, config, tf.constant([0, 1], tf.int64)).numpy()[..., 0]
    expected = np.zeros((16, 16))
    for rows in (slice(0, 4), slice(12, 16)):
        for cols in (slice(0, 4), slice(12, 16)):
            expected[rows, cols] = 1.0  # every corner, 0.25 * 16 = 4 pixels a side
    np.testing.assert_array_equal(mask[0], expected)
    np.testing.assert_array_equal(mask[1], expected)
    never = corner_mask(tf.constant(1), 16, AugmentConfig(erase_corners=0.0),
                        tf.constant([0, 1], tf.int64)).numpy()
    assert never.sum() == 0


def test_covered_corners_take_the_image_mean():
    image = np.full((1, 16, 16, 1), 100.0, np.float32)
    image[0, :4, :4] = 255.0  # a bright "marker" in the top-left corner
    config = AugmentConfig(**{**STILL.__dict__, "erase_corners": 1.0, "erase_size": (0.25, 0.25)})
    out = augment_batch(image, tf.constant([0, 0], tf.int64), config).numpy()[0, ..., 0]
    mean = (255.0 * 16 + 100.0 * 240) / 256  # 109.375
    np.testing.assert_allclose(out[:4, :4], mean, atol=1e-3)
    np.testing.assert_allclose(out[12:, 12:], mean, atol=1e-3)
    np.testing.assert_allclose(out[4:12, 4:12], 100.0, atol=1e-3)


def test_a_crop_magnifies_and_stays_inside_the_film():
    # A film whose left half is 0 and right half 200, cropped to a quarter of its area (half the
    # side, centre at most 16 px off): every crop holds the step between the halves, so both
    # halves show, at a share that moves with the crop's place; the step stays sharp (<= 2 px).
    image = np.zeros((1, 64, 64, 1), np.float32)
    image[:, :, 32:] = 200.0
    config = AugmentConfig(**{**STILL.__dict__, "crop_area": (0.25, 0.25)})
    bright_shares = []
    for step in range(12):
        row = augment_batch(image, tf.constant([5, step], tf.int64), config).numpy()[0, 32, :, 0]
        assert np.sum((row > 1) & (row < 199)) <= 2
        bright_shares.append(np.mean(row >= 199))
    assert all(0 < share < 1 for share in bright_shares)
    assert np.std(bright_shares) > 0.05


def test_full_crop_area_is_the_identity():
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    config = AugmentConfig(**{**STILL.__dict__, "crop_area": (1.0, 1.0)})
    out = augment_batch(images, tf.constant([0, 0], tf.int64), config).numpy()
    np.testing.assert_allclose(out, images, atol=1e-3)


def test_outer_band_share_by_hand():
    # 10 x 10, band 0.2: the 2 outer rings are 100 - 36 = 64 pixels
    even = np.ones((1, 10, 10))
    centre = np.zeros((1, 10, 10))
    centre[0, 4:6, 4:6] = 1.0
    corner = np.zeros((1, 10, 10))
    corner[0, 0, 0] = 3.0
    corner[0, 5, 5] = 1.0
    shares = outer_band_share(np.concatenate([even, centre, corner]), 0.2)
    np.testing.assert_allclose(shares, [0.64, 0.0, 0.75])
    assert np.isnan(outer_band_share(np.zeros((1, 10, 10)), 0.2)[0])


def test_occlusion_fills_the_band_or_the_centre_with_the_films_median():
    from bench.gradcam_band import filled

    images = np.arange(2 * 10 * 10, dtype=np.uint8).reshape(2, 10, 10, 1)
    band = outer_band_mask(10, 10, 0.2)
    assert band.sum() == 64 and not band[2:8, 2:8].any()
    out = filled(images, band)
    for i in range(2):
        median = int(np.median(images[i]))
        assert (out[i, band, 0] == median).all()
        np.testing.assert_array_equal(out[i, ~band], images[i, ~band])  # the centre untouched
    centre = filled(images, ~band)
    np.testing.assert_array_equal(centre[:, band], images[:, band])
    assert (images == np.arange(200, dtype=np.uint8).reshape(2, 10, 10, 1)).all()  # a copy


def test_recipe_overrides_parse_each_field_type():
    assert recipe_overrides(["equalize=true", "crop_area_min=0.4", "width=24"]) == {
        "equalize": True, "crop_area_min": 0.4, "width": 24}
    assert recipe_overrides(["max_images=300", "ship=ensemble"]) == {
        "max_images": 300, "ship": "ensemble"}
    assert recipe_overrides(["ema_momentum=0.995", "internal_size=160"]) == {
        "ema_momentum": 0.995, "internal_size": 160}  # float | None and int | None
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        recipe_overrides(["no_such_field=1"])
    with pytest.raises(ValueError, match="true or false"):
        recipe_overrides(["equalize=maybe"])


def test_recipe_settings_reach_the_augmentation_ranges():
    from services.trainer.modeling.cnn_training import augment_config
    from services.trainer.modeling.config import TrainConfig

    ranges = augment_config(TrainConfig(intensity_scale=2.0, crop_area_min=0.5,
                                        erase_corners=0.25))
    assert ranges.contrast == pytest.approx((0.7 ** 2, 1.4 ** 2))  # (0.49, 1.96)
    assert ranges.gamma == pytest.approx((0.49, 1.45 ** 2))
    assert ranges.brightness == pytest.approx(0.30)
    assert ranges.crop_area == (0.5, 1.0) and ranges.erase_corners == 0.25
    assert augment_config(TrainConfig(resample_min=0.5)).resample == 0.5
    assert augment_config(TrainConfig(resample_min=1.0)).resample == 1.0  # off
    for wrong in (0.0, 1.5):
        with pytest.raises(ValueError, match="resample_min"):
            TrainConfig(resample_min=wrong)


def fine_and_coarse(size: int = 64) -> np.ndarray:
    """A one-pixel checkerboard (the kind of trace a resize leaves) on a half-bright film."""
    grid = np.indices((size, size)).sum(axis=0) % 2
    film = np.where(np.arange(size)[None, :] < size // 2, 60.0, 180.0)
    return (film + 20.0 * (2 * grid - 1))[None, :, :, None].astype(np.float32).repeat(2, axis=0)


def checkerboard_amplitude(images: np.ndarray) -> float:
    """The mean absolute difference between horizontal neighbours inside each half."""
    left, right = images[:, 4:-4, 4:28, 0], images[:, 4:-4, 36:60, 0]
    return float(np.mean([np.abs(np.diff(part, axis=2)).mean() for part in (left, right)]))


def test_resampling_wipes_one_pixel_traces_and_keeps_the_film():
    images = fine_and_coarse()
    assert checkerboard_amplitude(images) == pytest.approx(40.0)
    for step in range(5):
        out = resample(tf.constant(images), 64, 0.5, tf.constant([3, step], tf.int64)).numpy()
        assert out.shape == images.shape
        assert checkerboard_amplitude(out) < 10.0  # the trace is mostly gone
        # the halves keep their grey levels and the mean is kept
        assert out[:, 8:-8, 4:24].mean() == pytest.approx(60.0, abs=5.0)
        assert out[:, 8:-8, 40:60].mean() == pytest.approx(180.0, abs=5.0)
        assert out.mean() == pytest.approx(images.mean(), abs=1.0)


def test_augmentation_resamples_only_when_asked():
    images = fine_and_coarse()
    still = dict(rotation_deg=0, shear_deg=0, zoom=(1, 1), translation=0, brightness=0,
                 contrast=(1, 1), gamma=(1, 1), blur_sigma=(0, 0), noise=0)
    seed = tf.constant([1, 1], tf.int64)
    kept = augment_batch(images, seed, AugmentConfig(**still)).numpy()
    np.testing.assert_allclose(kept, images, atol=1e-3)
    wiped = augment_batch(images, seed, AugmentConfig(**still, resample=0.5)).numpy()
    assert checkerboard_amplitude(wiped) < 10.0
