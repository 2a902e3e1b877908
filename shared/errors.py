"""Every typed error of the service: a stable `code`, an HTTP status and a message for hospital IT.

The gateway maps a `CXRError` to an RFC 7807 problem in one place; the worker stores `code` and
`message` as a job's failure reason. `transient` marks errors worth retrying.

A decompression bomb (more pixels than `max_image_pixels`) is reported as 413, like an upload
that is too large in bytes: in both cases the request is refused for its size, and the sender's fix
is the same (send a smaller image).
"""

from __future__ import annotations

from shared.contract import NOT_A_CHEST_RADIOGRAPH_CODE


class CXRError(Exception):
    """Base of every error the service reports to a caller."""

    code: str = "internal_error"
    http_status: int = 500
    transient: bool = False
    default_message: str = "The service could not process the request."

    def __init__(self, message: str | None = None, *, transient: bool | None = None) -> None:
        self.message = message or self.default_message
        if transient is not None:
            self.transient = transient
        super().__init__(self.message)

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "http_status": self.http_status,
                "transient": self.transient}


# --- images -----------------------------------------------------------------------------------


class ImageError(CXRError):
    """The uploaded bytes cannot be used as a chest X-ray."""

    code = "invalid_image"
    http_status = 422


class EmptyUploadError(ImageError):
    code = "empty_upload"
    http_status = 400
    default_message = "The upload is empty; send the bytes of a JPEG, PNG or DICOM image."


class NotAnImageError(ImageError):
    code = "not_an_image"
    http_status = 415
    default_message = (
        "The file is not a JPEG, PNG or DICOM image (its first bytes match none of them); "
        "send the X-ray itself, not a report or an archive."
    )


class UnsupportedFormatError(ImageError):
    code = "unsupported_format"
    http_status = 415
    default_message = "The image format is not accepted; send JPEG, PNG or DICOM."


class CorruptImageError(ImageError):
    code = "corrupt_image"
    http_status = 422
    default_message = (
        "The image file is damaged or incomplete (it may have been cut off during transfer); "
        "export it again and resend it."
    )


class ImageTooLargeError(ImageError):
    code = "image_too_large"
    http_status = 413
    default_message = "The image is too large to process; send a smaller export."


class ImageTooSmallError(ImageError):
    code = "image_too_small"
    http_status = 422
    default_message = "The image is too small to read; send the full-resolution X-ray."


class InvalidDicomError(ImageError):
    code = "invalid_dicom"
    http_status = 422
    default_message = "The DICOM file does not hold a single-frame X-ray image."


class DicomTooComplexError(ImageError):
    code = "dicom_too_complex"
    http_status = 422
    default_message = (
        "The DICOM instance is more complex than a radiograph needs (nesting, element count or "
        "element size over the service's limits); export the image alone."
    )


class NotChestRadiographError(ImageError):
    """A film outside what the model reads; `reasons` are the scope codes of shared.contract."""

    code = NOT_A_CHEST_RADIOGRAPH_CODE
    http_status = 422
    default_message = (
        "The image was not analysed: it is not a frontal chest radiograph; the model reads "
        "frontal (PA or AP) chest X-rays only."
    )

    def __init__(self, message: str | None = None, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = tuple(reasons)

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "reasons": list(self.reasons)}


# --- storage ----------------------------------------------------------------------------------


class StorageError(CXRError):
    code = "storage_unavailable"
    http_status = 503
    transient = True
    default_message = "The image store is unavailable right now; try again shortly."


class InvalidStorageKeyError(CXRError):
    code = "invalid_storage_key"
    http_status = 400
    default_message = "The storage key is not a plain relative path."


class ObjectNotFoundError(CXRError):
    code = "not_found"
    http_status = 404
    default_message = "The requested object does not exist."


# --- jobs -------------------------------------------------------------------------------------


class JobNotFoundError(CXRError):
    code = "job_not_found"
    http_status = 404
    default_message = "No prediction job has this id."


class JobExistsError(CXRError):
    code = "job_exists"
    http_status = 409
    default_message = "A prediction job with this id already exists."


class InvalidJobTransitionError(CXRError):
    code = "invalid_job_transition"
    http_status = 409
    default_message = "The job cannot move to that state from its current one."


class JobNotFinishedError(CXRError):
    code = "job_not_finished"
    http_status = 409
    default_message = ("The job is still queued or running: delete it, or send feedback, once "
                       "it has finished (GET the job with ?wait= to know when).")


class JobHasNoResultError(CXRError):
    code = "job_has_no_result"
    http_status = 409
    default_message = ("The job failed and has no result to confirm or correct; only a film "
                       "the model read takes feedback.")


# --- model serving ----------------------------------------------------------------------------


class ModelUnavailableError(CXRError):
    code = "model_unavailable"
    http_status = 503
    transient = True
    default_message = "The model server is unavailable right now; the request will be retried."


# --- job queue --------------------------------------------------------------------------------


class QueueUnavailableError(CXRError):
    code = "queue_unavailable"
    http_status = 503
    transient = True
    default_message = "The job queue is unavailable right now; try again shortly."
