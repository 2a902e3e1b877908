"""De-identification, screening and settings, without processes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from services.pacs.settings import PacsSettings, parse_destination
from shared.dicom_intake.deidentify import deidentify, replacement_uid
from shared.imaging.header_hints import header_reasons
from tests.pacs.studies import chest_dx


def test_deidentify_walks_sequences_drops_private_tags_and_keeps_the_original():
    original = chest_dx()
    referenced = Dataset()
    referenced.ReferencedSOPInstanceUID = original.SOPInstanceUID
    referenced.PatientName = "Nested^Name"
    original.ReferencedImageSequence = Sequence([referenced])
    block = original.private_block(0x0011, "HOSPITAL", create=True)
    block.add_new(0x01, "LO", "MRN-123456 again")

    copy = deidentify(original)

    assert original.PatientName == "Doe^Jane" and original.PatientID == "MRN-123456"
    nested = copy.ReferencedImageSequence[0]
    assert not nested.PatientName
    assert nested.ReferencedSOPInstanceUID == replacement_uid(original.SOPInstanceUID)
    assert copy.SOPInstanceUID == replacement_uid(original.SOPInstanceUID)
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    assert not any(element.tag.is_private for element in copy)
    assert copy.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert copy.PixelData == original.PixelData
    assert deidentify(original).StudyInstanceUID == copy.StudyInstanceUID  # stable mapping


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower-case "chest" on purpose
@pytest.mark.parametrize(("view", "body_part", "reasons"), [
    ("PA", "CHEST", ()), ("AP", "chest", ()), (None, None, ()), ("", "", ()),
    ("LL", "CHEST", ("lateral_view",)), ("RL", None, ("lateral_view",)),
    ("PA", "SKULL", ("not_chest_radiograph",))])
def test_screening(view, body_part, reasons):
    assert header_reasons(chest_dx(view=view, body_part=body_part)) == reasons


def test_production_needs_an_allow_list_of_calling_ae_titles():
    with pytest.raises(ValidationError, match="CXR_PACS_ALLOWED_CALLING_AE_TITLES"):
        PacsSettings(env="production")
    settings = PacsSettings(env="production", pacs_allowed_calling_ae_titles="CT1, DX2")
    assert settings.allowed_calling_ae_titles == ["CT1", "DX2"]
    assert PacsSettings(env="development").allowed_calling_ae_titles == []


def test_destination_is_aet_at_host_port():
    assert parse_destination("PACS@10.0.0.5:104") == ("PACS", "10.0.0.5", 104)
    for bad in ("PACS", "PACS@host", "@host:104", "PACS@host:x", "A_TITLE_LONGER_THAN_16@h:1"):
        with pytest.raises(ValueError):
            parse_destination(bad)
    with pytest.raises(ValidationError):
        PacsSettings(pacs_destination="nonsense")
