"""A check of a DICOM instance's encoded structure, before any parser builds a dataset from it.

pydicom reads sequences recursively and builds an object per element, so a small file can cost
far more memory and time than its size suggests (sequences nested hundreds deep, millions of tiny
elements). `check_structure` walks the element headers iteratively, without decoding any value,
and refuses an instance whose sequence nesting, element count or largest non-pixel element
exceeds the limits. It reads explicit and implicit VR, little and big endian, defined and
undefined lengths, encapsulated pixel data and Deflated transfer syntaxes (inflated with a bound).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.errors import CorruptImageError, DicomTooComplexError, ImageTooLargeError
from shared.imaging.limits import DecodeLimits

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
PIXEL_DATA = 0x7FE00010
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_DEFLATED = {DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"}


@dataclass(frozen=True)
class Encoding:
    implicit_vr: bool
    little_endian: bool

    @classmethod
    def of(cls, transfer_syntax: str) -> Encoding:
        if transfer_syntax == ImplicitVRLittleEndian:
            return cls(True, True)
        return cls(False, transfer_syntax != ExplicitVRBigEndian)


@dataclass
class _Container:
    end: int | None  # None: undefined length, closed by a delimiter
    is_sequence: bool
    encoding: Encoding


def check_file(data: bytes, limits: DecodeLimits) -> None:
    """Check a Part 10 file, or a bare dataset (its encoding guessed from its first bytes)."""
    start = 132 if len(data) >= 132 and data[128:132] == b"DICM" else 0
    transfer_syntax, body = _meta_group(data, start, limits)
    if transfer_syntax is None:  # a bare dataset: its first group (0008) tells the byte order
        little = data[body:body + 2] != b"\x00\x08"
        transfer_syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    check_dataset(data[body:], transfer_syntax, limits)


def check_dataset(data: bytes, transfer_syntax: str, limits: DecodeLimits) -> None:
    """Check a dataset without its file meta group, encoded in `transfer_syntax`."""
    if transfer_syntax in _DEFLATED:
        data = _inflate(data, limits)
    declared = Encoding.of(transfer_syntax)
    # Like pydicom, believe the data over the transfer syntax about explicit or implicit VR.
    explicit = data[4:6].isalpha() and data[4:6].isupper()
    _walk(data, 0, Encoding(not explicit, declared.little_endian), limits)


def _inflate(data: bytes, limits: DecodeLimits) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limits.max_bytes + 1)
    except zlib.error as exc:
        raise CorruptImageError(f"The deflated DICOM data cannot be inflated ({exc}).") from exc
    if len(inflated) > limits.max_bytes:
        raise ImageTooLargeError(
            f"The deflated DICOM data inflates to more than {limits.max_bytes:,} bytes, the "
            "largest accepted instance.")
    return inflated


def _meta_group(data: bytes, start: int, limits: DecodeLimits) -> tuple[str | None, int]:
    """The transfer syntax in the file meta group (always explicit VR little endian), and where
    the dataset begins; (None, start) when the file has no meta group."""
    position, transfer_syntax = start, None
    explicit_le = Encoding(False, True)
    while len(data) - position >= 8:
        group = struct.unpack_from("<H", data, position)[0]
        if group != 0x0002:
            break
        tag, vr, length, header = _header(data, position, explicit_le)
        if length == UNDEFINED or position + header + length > len(data):
            raise CorruptImageError("The DICOM file meta information is damaged; export it again.")
        if length > limits.max_dicom_element_bytes:
            raise _too_large_element(tag, length, limits)
        if tag == 0x00020010:
            transfer_syntax = data[position + header:position + header + length] \
                .decode("ascii", "replace").strip("\x00 ")
        position += header + length
    return transfer_syntax, position


def _header(data: bytes, position: int, encoding: Encoding) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, header length) of the element at `position`."""
    order = "<" if encoding.little_endian else ">"
    group, element = struct.unpack_from(order + "HH", data, position)
    tag = group << 16 | element
    if group == 0xFFFE or encoding.implicit_vr:
        return tag, None, struct.unpack_from(order + "I", data, position + 4)[0], 8
    vr = data[position + 4:position + 6]
    if vr in _LONG_VRS:
        if len(data) - position < 12:
            raise CorruptImageError("The DICOM data ends inside an element header.")
        return tag, vr, struct.unpack_from(order + "I", data, position + 8)[0], 12
    return tag, vr, struct.unpack_from(order + "H", data, position + 6)[0], 8


def _is_sequence(tag: int, vr: bytes | None, length: int) -> bool:
    if vr is not None:
        return vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
    if length == UNDEFINED:
        return tag != PIXEL_DATA
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private or unknown: pydicom keeps the value as bytes
        return False


def _walk(data: bytes, position: int, encoding: Encoding, limits: DecodeLimits) -> None:
    stack: list[_Container] = []
    elements = 0
    size = len(data)
    while True:
        while stack and stack[-1].end is not None and position >= stack[-1].end:
            if position > stack[-1].end:
                raise CorruptImageError("A DICOM sequence or item is longer than declared.")
            stack.pop()
        if size - position < 8:
            return  # the end, or trailing padding that the parser will judge
        current = stack[-1].encoding if stack else encoding
        tag, vr, length, header = _header(data, position, current)
        position += header
        if tag >> 16 == 0xFFFE:
            position = _delimiter(tag & 0xFFFF, length, position, stack, size)
            if tag & 0xFFFF != ITEM:
                continue
        elements += 1  # items count too: pydicom builds a dataset for each
        if elements > limits.max_dicom_elements:
            raise DicomTooComplexError(
                f"The DICOM instance holds more than {limits.max_dicom_elements:,} data "
                "elements; a radiograph needs far fewer. Export the image alone.")
        if tag >> 16 == 0xFFFE:
            continue
        if _is_sequence(tag, vr, length):
            depth = sum(1 for container in stack if container.is_sequence) + 1
            if depth > limits.max_dicom_depth:
                raise DicomTooComplexError(
                    f"The DICOM instance nests sequences more than {limits.max_dicom_depth} "
                    "deep; a radiograph needs far fewer. Export the image alone.")
            inner = Encoding(True, True) if vr == b"UN" else current
            # A value cut off at the end of the data is the parser's to judge, not a limit's.
            end = None if length == UNDEFINED else min(position + length, size)
            stack.append(_Container(end, True, inner))
        elif length == UNDEFINED:  # encapsulated pixel data: fragments up to a delimiter
            position = _skip_fragments(data, position, current)
        else:
            if tag != PIXEL_DATA and length > limits.max_dicom_element_bytes:
                raise _too_large_element(tag, length, limits)
            position = min(position + length, size)


def _delimiter(kind: int, length: int, position: int, stack: list[_Container],
               size: int) -> int:
    if kind == ITEM:
        if not stack or not stack[-1].is_sequence:
            raise CorruptImageError("A DICOM item appears outside a sequence.")
        end = None if length == UNDEFINED else min(position + length, size)
        stack.append(_Container(end, False, stack[-1].encoding))
    elif kind == ITEM_END:
        if not stack or stack[-1].is_sequence or stack[-1].end is not None:
            raise CorruptImageError("A DICOM item delimiter closes no item.")
        stack.pop()
    elif kind == SEQUENCE_END:
        if not stack or not stack[-1].is_sequence or stack[-1].end is not None:
            raise CorruptImageError("A DICOM sequence delimiter closes no sequence.")
        stack.pop()
    else:
        raise CorruptImageError(f"Unknown DICOM delimiter (FFFE,{kind:04X}).")
    return position


def _skip_fragments(data: bytes, position: int, encoding: Encoding) -> int:
    order = "<" if encoding.little_endian else ">"
    while len(data) - position >= 8:
        group, element, length = struct.unpack_from(order + "HHI", data, position)
        position += 8
        if (group, element) == (0xFFFE, SEQUENCE_END):
            return position
        if (group, element) != (0xFFFE, ITEM) or length == UNDEFINED:
            raise CorruptImageError("The encapsulated DICOM pixel data is damaged.")
        position += length
    raise CorruptImageError("The encapsulated DICOM pixel data is cut off.")


def _too_large_element(tag: int, length: int, limits: DecodeLimits) -> DicomTooComplexError:
    return DicomTooComplexError(
        f"DICOM element ({tag >> 16:04X},{tag & 0xFFFF:04X}) holds {length:,} bytes; elements "
        f"other than the pixel data may hold at most {limits.max_dicom_element_bytes:,}.")
