"""STOW-RS (PS3.18 10.5): parse a `multipart/related; type="application/dicom"` body and build
the response dataset (Referenced SOP Sequence / Failed SOP Sequence) as DICOM JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.errors import CXRError

DICOM_MEDIA_TYPE = "application/dicom"
# What a Study Instance UID in the request path may look like (PS3.5 9.1: digits and dots).
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


class UnsupportedStowMediaTypeError(CXRError):
    code = "unsupported_media_type"
    http_status = 415
    default_message = ('Send STOW-RS as multipart/related; type="application/dicom" '
                       "with one DICOM instance per part.")


def dicom_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bytes of each application/dicom part; 415 for anything but multipart/related."""
    envelope = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    message = BytesParser(policy=HTTP).parsebytes(envelope)
    if message.get_content_type() != "multipart/related" or not message.is_multipart():
        raise UnsupportedStowMediaTypeError()
    declared = message.get_param("type")
    if declared and str(declared).lower() != DICOM_MEDIA_TYPE:
        raise UnsupportedStowMediaTypeError()
    parts = [part.get_payload(decode=True) or b"" for part in message.iter_parts()
             if part.get_content_type() == DICOM_MEDIA_TYPE]
    if not parts:
        raise UnsupportedStowMediaTypeError()
    return parts


@dataclass
class StowResponse:
    referenced: list[Dataset] = field(default_factory=list)
    failed: list[Dataset] = field(default_factory=list)

    def stored(self, sop_class_uid: str, sop_instance_uid: str,
               retrieve_url: str | None = None) -> None:
        item = _reference(sop_class_uid, sop_instance_uid)
        if retrieve_url:
            item.RetrieveURL = retrieve_url
        self.referenced.append(item)

    def failure(self, sop_class_uid: str | None, sop_instance_uid: str | None,
                reason: int, comment: str | None = None) -> None:
        """A failed instance; `comment` (Transaction Status Comment) says why in words."""
        item = _reference(sop_class_uid, sop_instance_uid)
        item.FailureReason = reason
        if comment:
            item.TransactionStatusComment = comment[:10240]  # LT holds up to 10240 characters
        self.failed.append(item)

    @property
    def http_status(self) -> int:
        """200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3)."""
        if not self.failed:
            return 200
        return 202 if self.referenced else 409

    def to_json(self) -> dict[str, object]:
        dataset = Dataset()
        if self.referenced:
            dataset.ReferencedSOPSequence = Sequence(self.referenced)
        if self.failed:
            dataset.FailedSOPSequence = Sequence(self.failed)
        return dataset.to_json_dict()


def _reference(sop_class_uid: str | None, sop_instance_uid: str | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid or ""
    item.ReferencedSOPInstanceUID = sop_instance_uid or ""
    return item
