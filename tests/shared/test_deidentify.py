"""The de-identifier every intake path uses, on the identifier corpus: nothing identifying left in
the written file, what the model needs untouched, UIDs replaced the same way in every process."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.dicom_intake.deidentify import deidentify, replacement_uid
from shared.imaging import DecodeLimits, decode_xray
from tests.shared.identified_dicom import KEPT, identified_chest_dx
from tests.shared.xray_files import dicom_bytes

LIMITS = DecodeLimits(min_side=16)


def written(dataset: Dataset) -> bytes:
    return dicom_bytes(dataset)


def test_no_identifier_of_any_class_is_left_in_the_written_file():
    instance = identified_chest_dx()
    before = written(instance.dataset)
    assert len(instance.found_in(before)) == len(instance.identifiers) > 50

    after = written(deidentify(instance.dataset))

    assert instance.found_in(after) == []
    assert instance.found_in(written(instance.dataset)) != []  # the original is left as it was


def test_what_the_model_and_the_screening_read_is_untouched():
    instance = identified_chest_dx()
    copy = dcmread(io.BytesIO(written(deidentify(instance.dataset))))
    for keyword in KEPT:
        assert copy[keyword].value == instance.dataset[keyword].value, keyword
    np.testing.assert_array_equal(decode_xray(written(copy), LIMITS).pixels,
                                  decode_xray(written(instance.dataset), LIMITS).pixels)


def test_the_standard_attributes_are_emptied_removed_or_replaced_as_table_e11_says():
    instance = identified_chest_dx()
    original = instance.dataset
    copy = deidentify(original)
    for emptied in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate",
                    "StudyDate", "ReferringPhysicianName", "StudyID"):  # Z, Z/D: present, empty
        assert emptied in copy and not copy[emptied].value, emptied
    for removed in ("OtherPatientIDs", "ImageComments", "PatientAddress",
                    "RequestAttributesSequence", "CurrentPatientLocation", "ServiceEpisodeID"):
        assert removed not in copy, removed  # X
    assert copy.InstitutionName == copy.OperatorsName == "ANONYMIZED"  # X/Z/D: a dummy value
    assert not any(element.tag.is_private for element in copy)
    assert not any(0x6000 <= element.tag.group <= 0x601E for element in copy)
    assert copy.PatientIdentityRemoved == "YES"
    assert copy.LongitudinalTemporalInformationModified == "REMOVED"
    assert [code.CodeValue for code in copy.DeidentificationMethodCodeSequence] == [
        "113100", "113108"]
    assert copy.BurnedInAnnotation == "NO"


def test_uids_are_replaced_consistently_including_references_in_sequences():
    original = identified_chest_dx().dataset
    referencing = Dataset()
    referencing.ReferencedSOPClassUID = original.SOPClassUID
    referencing.ReferencedSOPInstanceUID = original.SOPInstanceUID
    referencing.PatientName = "Nested^Name"  # a name where no module puts one
    original.ReferencedImageSequence = Sequence([referencing])

    copy = deidentify(original)

    assert copy.SOPInstanceUID == replacement_uid(original.SOPInstanceUID)
    assert copy.SOPInstanceUID != original.SOPInstanceUID
    assert copy.StudyInstanceUID == replacement_uid(original.StudyInstanceUID)
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    nested = copy.ReferencedImageSequence[0]
    assert nested.ReferencedSOPInstanceUID == copy.SOPInstanceUID
    assert not nested.get("PatientName")
    assert copy.SOPClassUID == original.SOPClassUID
    assert deidentify(original).StudyInstanceUID == copy.StudyInstanceUID


def test_another_process_replaces_a_uid_the_same_way():
    """C-STORE (the SCP process) and STOW-RS / uploads (the gateway) must agree."""
    uid = identified_chest_dx().dataset.SOPInstanceUID
    code = ("from shared.dicom_intake.deidentify import replacement_uid; "
            f"print(replacement_uid({uid!r}))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert there == replacement_uid(uid)


@pytest.mark.parametrize(("age", "stored"), [("045Y", "045Y"), ("089Y", "089Y"),
                                             ("090Y", "090Y"), ("097Y", "090Y"),
                                             ("006M", "006M")])
def test_patient_age_is_kept_and_ages_over_ninety_are_shown_as_ninety(age, stored):
    dataset = identified_chest_dx().dataset
    dataset.PatientAge = age
    assert deidentify(dataset).PatientAge == stored


def test_an_attribute_of_a_vr_without_a_dummy_value_is_removed_not_a_crash():
    dataset = identified_chest_dx().dataset
    del dataset.InstitutionName
    dataset.add_new(0x00080080, "OW", b"Qz\x00\x01")  # Institution Name (X/Z/D), written as OW
    copy = deidentify(dataset)
    assert 0x00080080 not in copy and copy.PatientIdentityRemoved == "YES"
