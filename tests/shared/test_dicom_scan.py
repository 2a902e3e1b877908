"""The structure check of DICOM bytes before pydicom parses them (`shared.imaging.dicom_scan`)."""

from __future__ import annotations

import io
import os
import warnings

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from shared.dicom_intake.receive import encode
from shared.errors import DicomTooComplexError, ImageTooLargeError
from shared.imaging import DecodeLimits, decode_xray
from shared.imaging.dicom_scan import check_file
from tests.pacs.studies import chest_dx
from tests.reliability import dicom_attacks

GENEROUS = DecodeLimits(max_bytes=10**9, max_dicom_element_bytes=10**9)


def readable_test_files() -> list[str]:
    """pydicom's own test files that pydicom reads in full."""
    readable = []
    for path in get_testdata_files("*"):
        if os.path.isdir(path) or not (path.endswith(".dcm") or "." not in os.path.basename(path)):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcmread(path, force=True).walk(lambda _ds, _elem: None)
        except Exception:  # noqa: BLE001, S112 - files pydicom itself refuses are not the point
            continue
        readable.append(path)
    return readable


def test_every_file_pydicom_reads_passes_the_check():
    files = readable_test_files()
    assert len(files) >= 50
    for path in files:
        with open(path, "rb") as handle:
            check_file(handle.read(), GENEROUS)


@pytest.mark.parametrize("build", [dicom_attacks.nested_undefined, dicom_attacks.nested_defined])
def test_nesting_is_refused_one_level_past_the_limit(build):
    limits = DecodeLimits(max_dicom_depth=5)
    check_file(build(5).data, limits)
    with pytest.raises(DicomTooComplexError, match="nests sequences more than 5 deep"):
        check_file(build(6).data, limits)


def test_nesting_in_implicit_vr_with_defined_lengths_is_found_by_the_dictionary():
    dataset = chest_dx()
    inner = Dataset()
    inner.TextValue = "x"
    for _ in range(20):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    dataset.ContentSequence = Sequence([inner])
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    dataset.set_original_encoding(True, True)
    data = encode(dataset)
    check_file(data, DecodeLimits(max_dicom_depth=21))
    with pytest.raises(DicomTooComplexError):
        check_file(data, DecodeLimits(max_dicom_depth=20))


def test_element_count_and_size_limits():
    many = dicom_attacks.many_items(1_000).data  # 1,000 items of one element each
    check_file(many, DecodeLimits(max_dicom_elements=2_100))
    with pytest.raises(DicomTooComplexError, match="more than 1,900 data elements"):
        check_file(many, DecodeLimits(max_dicom_elements=1_900))
    large = dicom_attacks.large_private_element(20_000).data
    check_file(large, DecodeLimits(max_dicom_element_bytes=20_000))
    with pytest.raises(DicomTooComplexError, match=r"\(0009,1001\) holds 20,000 bytes"):
        check_file(large, DecodeLimits(max_dicom_element_bytes=19_999))


def test_deflated_data_is_inflated_with_a_bound():
    small = dicom_attacks.deflate_bomb(10_000)
    check_file(small.data, DecodeLimits())
    assert dcmread(io.BytesIO(small.data)).SOPInstanceUID == small.sop_instance_uid
    with pytest.raises(ImageTooLargeError, match="inflates to more than 1,000,000 bytes"):
        check_file(dicom_attacks.deflate_bomb(2_000_000).data, DecodeLimits(max_bytes=1_000_000))


def test_decoding_memory_is_refused_before_decoding():
    data = encode(chest_dx())  # 256 x 256, 8 bits: 256 * 256 * (1 + 17) bytes to decode
    assert decode_xray(data, DecodeLimits(max_decode_memory_bytes=2**20 * 2)).pixels.shape == (
        256, 256)
    with pytest.raises(ImageTooLargeError, match="decoding it would need"):
        decode_xray(data, DecodeLimits(max_decode_memory_bytes=2**20))
