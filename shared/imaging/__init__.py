"""Decoding uploads (JPEG, PNG, DICOM) and the one preprocessing step training and serving share."""

from shared.imaging.decode import decode_xray
from shared.imaging.formats import detect_format
from shared.imaging.limits import DecodedImage, DecodeLimits
from shared.imaging.preprocess import RESAMPLING_FILTER, to_model_input

__all__ = [
    "RESAMPLING_FILTER",
    "DecodeLimits",
    "DecodedImage",
    "decode_xray",
    "detect_format",
    "to_model_input",
]
