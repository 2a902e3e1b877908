"""Hostile and malformed DICOM instances, built as bytes (pydicom itself cannot write most of them).

Each builder starts from a valid chest DX (`tests.pacs.studies.chest_dx`) encoded as a Part 10
file, so the only thing wrong with it is the attack.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from shared.dicom_intake.receive import encode
from tests.pacs.studies import chest_dx

UNDEFINED = b"\xff\xff\xff\xff"
ITEM_UNDEFINED = b"\xfe\xff\x00\xe0" + UNDEFINED
ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
CONTENT_SEQUENCE = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00O"


@dataclass(frozen=True)
class Attack:
    """One hostile instance: its bytes (a Part 10 file) and the transfer syntax in its meta."""

    kind: str
    data: bytes
    transfer_syntax: str
    sop_instance_uid: str


def _insert_before_pixels(data: bytes, extra: bytes) -> bytes:
    at = data.index(PIXEL_DATA_TAG, 132)
    return data[:at] + extra + data[at:]


def _base(dataset: Dataset | None = None) -> tuple[Dataset, bytes]:
    dataset = dataset or chest_dx()
    return dataset, encode(dataset)


def nested_undefined(depth: int) -> Attack:
    """ContentSequence nested `depth` deep, undefined lengths (delimiters close each level)."""
    dataset, data = _base()
    nested = (CONTENT_SEQUENCE + UNDEFINED + ITEM_UNDEFINED) * depth \
        + (ITEM_END + SEQUENCE_END) * depth
    return Attack(f"nested_{depth}_undefined_length", _insert_before_pixels(data, nested),
                  ExplicitVRLittleEndian, dataset.SOPInstanceUID)


def nested_defined(depth: int) -> Attack:
    """ContentSequence nested `depth` deep, every sequence and item with an explicit length."""
    dataset, data = _base()
    inner = b""
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
        inner = CONTENT_SEQUENCE + struct.pack("<I", len(item)) + item
    return Attack(f"nested_{depth}_defined_length", _insert_before_pixels(data, inner),
                  ExplicitVRLittleEndian, dataset.SOPInstanceUID)


def many_items(count: int) -> Attack:
    """One sequence of `count` items, each holding one short element (2 x `count` elements)."""
    dataset, data = _base()
    element = struct.pack("<HH", 0x0040, 0xA040) + b"CS" + struct.pack("<H", 4) + b"TEXT"
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(element)) + element
    sequence = CONTENT_SEQUENCE + UNDEFINED + item * count + SEQUENCE_END
    return Attack(f"{count}_items", _insert_before_pixels(data, sequence),
                  ExplicitVRLittleEndian, dataset.SOPInstanceUID)


def large_private_element(size: int) -> Attack:
    """A private OB element of `size` bytes beside a valid image."""
    dataset = chest_dx()
    block = dataset.private_block(0x0009, "CXR ATTACK", create=True)
    block.add_new(0x01, "OB", b"\x00" * size)
    dataset, data = _base(dataset)
    return Attack(f"private_element_{size}_bytes", data, ExplicitVRLittleEndian,
                  dataset.SOPInstanceUID)


def deflate_bomb(inflated_size: int) -> Attack:
    """Deflated Explicit VR Little Endian whose dataset inflates to `inflated_size` bytes."""
    dataset = chest_dx()
    block = dataset.private_block(0x0009, "CXR ATTACK", create=True)
    block.add_new(0x01, "OB", b"\x00" * inflated_size)
    plain = encode(dataset)
    meta_end = _meta_end(plain)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(plain[meta_end:]) + compressor.flush()
    meta = _with_transfer_syntax(plain[:meta_end], DeflatedExplicitVRLittleEndian)
    return Attack(f"deflate_bomb_{inflated_size}_bytes", meta + body,
                  DeflatedExplicitVRLittleEndian, dataset.SOPInstanceUID)


def jpeg_ls_bomb(side: int) -> Attack:
    """A JPEG-LS Lossless image declaring `side` x `side` pixels, mostly flat (a few 100 kB)."""
    dataset = chest_dx()
    pixels = np.zeros((side, side), np.uint8)
    pixels[::97, :] = 200
    dataset.Rows = dataset.Columns = side
    dataset.compress(JPEGLSLossless, pixels)
    del pixels
    dataset, data = _base(dataset)
    return Attack(f"jpeg_ls_{side}x{side}", data, JPEGLSLossless, dataset.SOPInstanceUID)


def rle_meta_native_pixels() -> Attack:
    """File meta says RLE Lossless; the pixel data is native (uncompressed)."""
    dataset, data = _base()
    meta_end = _meta_end(data)
    meta = _with_transfer_syntax(data[:meta_end], RLELossless)
    return Attack("rle_meta_native_pixels", meta + data[meta_end:], RLELossless,
                  dataset.SOPInstanceUID)


def jpeg_meta_native_pixels() -> Attack:
    """File meta says JPEG Baseline; the pixel data is native."""
    dataset, data = _base()
    meta_end = _meta_end(data)
    meta = _with_transfer_syntax(data[:meta_end], JPEGBaseline8Bit)
    return Attack("jpeg_meta_native_pixels", meta + data[meta_end:], JPEGBaseline8Bit,
                  dataset.SOPInstanceUID)


def native_meta_encapsulated_pixels() -> Attack:
    """File meta says Explicit VR Little Endian; the pixel data is JPEG-LS fragments."""
    dataset = chest_dx()
    dataset.compress(JPEGLSLossless)
    dataset, data = _base(dataset)
    meta_end = _meta_end(data)
    meta = _with_transfer_syntax(data[:meta_end], ExplicitVRLittleEndian)
    return Attack("native_meta_encapsulated_pixels", meta + data[meta_end:],
                  ExplicitVRLittleEndian, dataset.SOPInstanceUID)


def _meta_end(data: bytes) -> int:
    """Where the file meta group of a Part 10 file ends (its group length says)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack_from("<I", data, 140)
    return 144 + group_length


def _with_transfer_syntax(meta: bytes, transfer_syntax: str) -> bytes:
    """`meta` (preamble and file meta group) with its Transfer Syntax UID replaced."""
    tag = b"\x02\x00\x10\x00UI"
    at = meta.index(tag)
    (length,) = struct.unpack_from("<H", meta, at + 6)
    value = transfer_syntax.encode()
    value += b"\x00" * (len(value) % 2)
    meta = meta[:at + 6] + struct.pack("<H", len(value)) + value + meta[at + 8 + length:]
    (old_group_length,) = struct.unpack_from("<I", meta, 140)
    new_group_length = old_group_length + len(value) - length
    return meta[:140] + struct.pack("<I", new_group_length) + meta[144:]
