"""Pixel checks, DICOM header hints and the scope judgement on real encoded files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.contract import (
    ADULT,
    ATYPICAL_IMAGE,
    BLANK_IMAGE,
    COLOUR_IMAGE,
    INVERTED,
    LATERAL_VIEW,
    NOISE_IMAGE,
    NOT_CHEST_RADIOGRAPH,
    ROTATED,
    SCOPE_CHECKS,
    SCOPE_SCORES,
    SCOPE_THRESHOLDS,
)
from shared.errors import NotChestRadiographError
from shared.imaging import decode_xray
from shared.imaging.header_hints import age_in_years, header_reasons
from shared.scope import check_refusal, model_reasons
from tests.gateway.uploads import sample_xray
from tests.shared.xray_files import dicom_bytes, jpeg_bytes, png_bytes, xray_dataset

RNG = np.random.default_rng(11)


def film() -> np.ndarray:
    return np.asarray(Image.open(sample_xray("NORMAL")).convert("L"))


def test_real_films_raise_nothing_in_any_format():
    pixels = film()
    rgb = np.stack([pixels] * 3, axis=2)
    for data in (sample_xray("PNEUMONIA").read_bytes(), png_bytes(pixels),
                 jpeg_bytes(rgb, quality=70), png_bytes(rgb),
                 dicom_bytes(xray_dataset(pixels.astype(np.uint16) * 16))):
        assert decode_xray(data).scope_reasons == ()


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: png_bytes(RNG.integers(0, 256, (300, 400), dtype=np.uint8)), NOISE_IMAGE),
    (lambda: jpeg_bytes(RNG.integers(0, 256, (1500, 1200), dtype=np.uint8), quality=75),
     NOISE_IMAGE),
    (lambda: png_bytes(np.zeros((500, 400), np.uint8)), BLANK_IMAGE),
    (lambda: jpeg_bytes(np.full((500, 400), 255, np.uint8)), BLANK_IMAGE),
    (lambda: png_bytes(np.clip(128 + RNG.normal(0, 2, (400, 400)), 0, 255).astype(np.uint8)),
     BLANK_IMAGE),
])
def test_noise_and_blank_images_are_recognised(make, reason):
    assert decode_xray(make()).scope_reasons == (reason,)


def test_colour_is_real_chroma_not_an_rgb_container():
    pixels = film()
    tinted = np.stack([pixels, pixels, np.clip(pixels.astype(int) - 50, 0, 255)], axis=2)
    assert decode_xray(jpeg_bytes(tinted.astype(np.uint8))).scope_reasons == (COLOUR_IMAGE,)
    marked = np.stack([pixels] * 3, axis=2)
    marked[5:20, 5:30] = (255, 0, 0)  # a small red marker is not a colour photograph
    assert decode_xray(png_bytes(marked)).scope_reasons == ()


def test_a_window_that_maps_every_pixel_to_one_value_is_blank():
    pixels = film().astype(np.uint16) * 16
    dataset = xray_dataset(pixels, WindowCenter=60000, WindowWidth=10)  # far above every value
    assert decode_xray(dicom_bytes(dataset)).scope_reasons == (BLANK_IMAGE,)


def test_a_chest_tagged_dicom_whose_pixels_are_a_photograph_is_colour():
    pixels = film()
    photo = np.stack([pixels, np.roll(pixels, 40, axis=1), 255 - pixels], axis=2)
    dataset = xray_dataset(photo.astype(np.uint8), photometric="RGB", bits_stored=8)
    decoded = decode_xray(dicom_bytes(dataset))
    assert decoded.metadata["BodyPartExamined"] == "CHEST"
    assert COLOUR_IMAGE in decoded.scope_reasons


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # the malformed age on purpose
@pytest.mark.parametrize(("elements", "reasons"), [
    ({}, ()),
    ({"PatientAge": "017Y"}, ()),
    ({"PatientAge": "018Y"}, (ADULT,)),
    ({"PatientAge": "240M"}, (ADULT,)),
    ({"PatientAge": "garbage"}, ()),
    ({"ViewPosition": "LL"}, (LATERAL_VIEW,)),
    ({"ViewPosition": ""}, ()),
    ({"BodyPartExamined": "HAND", "PatientAge": "045Y"}, (NOT_CHEST_RADIOGRAPH, ADULT)),
])
def test_header_hints(elements, reasons):
    dataset = xray_dataset(film().astype(np.uint16), **elements)
    assert header_reasons(dataset) == reasons
    assert decode_xray(dicom_bytes(dataset)).scope_reasons == reasons


def test_age_strings():
    assert age_in_years("006M") == pytest.approx(0.5)
    assert age_in_years("052W") == pytest.approx(364 / 365.25)
    assert age_in_years("") is None and age_in_years("12") is None


def test_refusing_reasons_refuse_and_flags_pass():
    check_refusal([ADULT, ROTATED])
    with pytest.raises(NotChestRadiographError) as raised:
        check_refusal([ADULT, NOISE_IMAGE])
    assert raised.value.reasons == (NOISE_IMAGE, ADULT)
    assert raised.value.code == "not_a_chest_radiograph"
    assert "not analysed" in raised.value.message and "noise" in raised.value.message


def test_model_reasons_follow_scores_and_thresholds():
    columns = len(SCOPE_CHECKS)
    scores = np.zeros((2, columns), np.float32)
    scores[1, SCOPE_CHECKS.index(INVERTED)] = 0.9
    scores[1, SCOPE_CHECKS.index(ATYPICAL_IMAGE)] = 0.5
    outputs = {SCOPE_SCORES: scores, SCOPE_THRESHOLDS: np.full((2, columns), 0.5, np.float32)}
    assert model_reasons(outputs, 0) == ()
    assert model_reasons(outputs, 1) == (INVERTED, ATYPICAL_IMAGE)  # at the threshold raises
    assert model_reasons({}) == ()
    with pytest.raises(ValueError):
        model_reasons({SCOPE_SCORES: scores[:, :2], SCOPE_THRESHOLDS: scores[:, :2]})
