"""The status codes the DICOM node and STOW-RS answer mean, to a sender, what they are used for:
read back through pynetdicom's tables of the Storage Service Class statuses (PS3.4 B.2.3)."""

import pytest
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from shared.dicom_intake import status


@pytest.mark.parametrize(("code", "category", "meaning"), [
    (status.SUCCESS, "Success", ""),
    (status.OUT_OF_RESOURCES, "Failure", "Refused: Out of Resources"),
    (status.CANNOT_UNDERSTAND, "Failure", "Cannot Understand"),
    (status.STUDY_MISMATCH, "Failure", "Cannot Understand"),
    (status.PROCESSING_FAILURE, "Failure", "Processing Failure"),
    (status.DUPLICATE_SOP_INSTANCE, "Failure", "Duplication SOP Instance"),
    (status.SOP_CLASS_NOT_SUPPORTED, "Failure", "Refused: SOP Class Not Supported"),
])
def test_each_status_reads_as_its_meaning_to_a_dicom_sender(code, category, meaning):
    assert code_to_category(code) == category
    assert STORAGE_SERVICE_CLASS_STATUS[code] == (category, meaning)

