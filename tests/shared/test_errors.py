"""Typed errors: stable codes, HTTP statuses, and which ones are worth retrying."""

import pytest

from shared import errors


@pytest.mark.parametrize(
    ("error_class", "code", "status", "transient"),
    [
        (errors.NotAnImageError, "not_an_image", 415, False),
        (errors.UnsupportedFormatError, "unsupported_format", 415, False),
        (errors.CorruptImageError, "corrupt_image", 422, False),
        (errors.ImageTooLargeError, "image_too_large", 413, False),
        (errors.ImageTooSmallError, "image_too_small", 422, False),
        (errors.InvalidDicomError, "invalid_dicom", 422, False),
        (errors.EmptyUploadError, "empty_upload", 400, False),
        (errors.StorageError, "storage_unavailable", 503, True),
        (errors.ObjectNotFoundError, "not_found", 404, False),
        (errors.ModelUnavailableError, "model_unavailable", 503, True),
    ],
)
def test_codes_and_statuses(error_class, code, status, transient):
    error = error_class()
    assert isinstance(error, errors.CXRError)
    assert (error.code, error.http_status, error.transient) == (code, status, transient)
    assert error.message == str(error)
    assert len(error.message) > 20


def test_image_errors_share_a_base():
    for error_class in (errors.NotAnImageError, errors.CorruptImageError, errors.InvalidDicomError):
        assert issubclass(error_class, errors.ImageError)


def test_message_and_transience_can_be_given():
    error = errors.StorageError("S3 said no.", transient=False)
    assert error.message == "S3 said no."
    assert not error.transient
    assert errors.StorageError().transient  # the class default is untouched
    assert error.to_dict() == {"code": "storage_unavailable", "message": "S3 said no.",
                               "http_status": 503, "transient": False}
