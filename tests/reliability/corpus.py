"""The bad-input corpus: every kind of malformed, hostile or unsupported request the upload and
job routes must refuse with a 4xx problem, generated in code (no binary files in the repo).

Each `BadInput` says what the gateway must answer: the status, the stable error `code`, and a
word that the problem's `detail` must contain, so the message names what is wrong. Multipart
bodies are written byte by byte here (not by an HTTP client), so file names with NUL bytes, cut
off bodies and duplicate fields reach the server exactly as a broken client would send them.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pydicom.uid import MPEG2MPML, CTImageStorage, SecondaryCaptureImageStorage

from tests.gateway.uploads import sample_xray
from tests.shared import xray_files

BOUNDARY = "cxr-corpus-boundary"
TRAVERSAL_NAME = "../../etc/passwd"
UPLOAD = "/v1/predictions"


@dataclass(frozen=True)
class Part:
    """One multipart part; `filename=None` makes it a plain form field."""

    name: str
    data: bytes
    filename: bytes | None = b"xray.jpeg"
    content_type: bytes | None = b"application/octet-stream"

    def encode(self) -> bytes:
        disposition = b'Content-Disposition: form-data; name="' + self.name.encode() + b'"'
        if self.filename is not None:
            disposition += b'; filename="' + self.filename + b'"'
        head = disposition + b"\r\n"
        if self.content_type is not None:
            head += b"Content-Type: " + self.content_type + b"\r\n"
        return b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n" + self.data + b"\r\n"


def multipart(*parts: Part, closed: bool = True) -> bytes:
    body = b"".join(part.encode() for part in parts)
    return body + (b"--" + BOUNDARY.encode() + b"--\r\n" if closed else b"")


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class RequestSpec:
    method: str
    path: str
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def upload(data: bytes, filename: bytes | None = b"xray.jpeg",
           content_type: bytes | None = b"application/octet-stream",
           headers: dict[str, str] | None = None) -> RequestSpec:
    """POST /v1/predictions with `data` as the one `file` part."""
    body = multipart(Part("file", data, filename, content_type))
    return RequestSpec("POST", UPLOAD, body, {"Content-Type": MULTIPART_TYPE, **(headers or {})})


@dataclass(frozen=True)
class BadInput:
    kind: str
    status: int
    code: str
    detail_mentions: str  # a word the problem's `detail` must contain (case-insensitive)
    request: Callable[[], RequestSpec]


# --- files ------------------------------------------------------------------------------------


def valid_jpeg() -> bytes:
    """A real chest X-ray from data/sample (the gateway accepts it)."""
    return sample_xray().read_bytes()


def valid_png() -> bytes:
    return xray_files.png_bytes(xray_files.gradient(128, 160))


def random_bytes(size: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def truncated_jpeg() -> bytes:
    return valid_jpeg()[:2000]


def truncated_png() -> bytes:
    data = xray_files.png_bytes(np.random.default_rng(1).integers(0, 255, (256, 256), np.uint8))
    return data[: len(data) // 2]


def png_with_bad_crc() -> bytes:
    data = bytearray(valid_png())
    data[29] ^= 0xFF  # the IHDR chunk's CRC (8-byte signature + 4 length + 4 type + 13 data)
    return bytes(data)


def png_bomb_real(width: int = 11_000, height: int = 10_000) -> bytes:
    """A valid PNG with real pixel data: 110 Mpx of black (over the 100 Mpx limit) in ~110 kB.

    Written chunk by chunk with a streaming compressor, so the test never holds the pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one byte per gray pixel
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def jpeg_with_huge_dimensions(width: int = 65_000, height: int = 65_000) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare `width` x `height`."""
    data = bytearray(xray_files.jpeg_bytes(xray_files.gradient(64, 64)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gray_jpeg(height: int, width: int) -> bytes:
    return xray_files.jpeg_bytes(xray_files.gradient(height, width))


def gray_png(height: int, width: int) -> bytes:
    return xray_files.png_bytes(xray_files.gradient(height, width))


def pdf_document() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n"
            b"%%EOF\n")


def html_page() -> bytes:
    return b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>\n"


def svg_image() -> bytes:
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            b'<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
            b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512">'
            b"<text>&xxe;</text></svg>\n")


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("chest.jpeg", valid_jpeg())
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.fromarray(xray_files.gradient(128, 128, 0, value)) for value in (80, 160, 255)]
    return xray_files.encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                             duration=100, loop=0)


def pillow_file(image_format: str, **options) -> bytes:
    return xray_files.encode(Image.fromarray(xray_files.gradient(128, 128)), image_format,
                             **options)


def dicom_multiframe() -> bytes:
    frames = np.stack([xray_files.gradient(96, 128, 0, 4000, np.uint16)] * 3)
    return xray_files.dicom_bytes(xray_files.xray_dataset(frames))


def dicom_truncated() -> bytes:
    data = xray_files.dicom_bytes(
        xray_files.xray_dataset(xray_files.gradient(128, 160, 0, 4000, np.uint16)))
    return data[: len(data) - 20_000]


def dicom_palette_colour() -> bytes:
    dataset = xray_files.xray_dataset(xray_files.gradient(96, 128, 0, 255, np.uint8),
                                      bits_stored=8)
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    return xray_files.dicom_bytes(dataset)


def dicom_huge_dimensions() -> bytes:
    """A DICOM header declaring 60000 x 60000 pixels over a small pixel buffer."""
    dataset = xray_files.xray_dataset(xray_files.gradient(96, 128, 0, 4000, np.uint16))
    dataset.Rows = dataset.Columns = 60_000
    return xray_files.dicom_bytes(dataset)


def colour_photo() -> bytes:
    """A colour picture: strong, unequal colours over smooth shapes."""
    yy, xx = np.mgrid[0:300, 0:400] / 400.0
    rgb = np.stack([200 * xx + 30, 160 * (1 - yy) + 40, 120 + 80 * np.sin(6 * xx)], axis=2)
    return xray_files.jpeg_bytes(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB"))


def noise_png() -> bytes:
    return xray_files.png_bytes(np.random.default_rng(2).integers(0, 256, (256, 256), np.uint8))


def dicom_xray(**elements) -> bytes:
    """A valid 12-bit DICOM image whose header says what `elements` set."""
    return xray_files.dicom_bytes(xray_files.xray_dataset(
        xray_files.gradient(128, 160, 0, 4000, np.uint16), **elements))


# --- the corpus ---------------------------------------------------------------------------------

def _file_case(kind: str, make: Callable[[], bytes], status: int, code: str, mentions: str,
               filename: bytes = b"xray.jpeg",
               content_type: bytes | None = b"application/octet-stream") -> BadInput:
    return BadInput(kind, status, code, mentions,
                    lambda: upload(make(), filename=filename, content_type=content_type))


def _request_case(kind: str, status: int, code: str, mentions: str,
                  make: Callable[[], RequestSpec]) -> BadInput:
    return BadInput(kind, status, code, mentions, make)


def build_corpus(max_upload_bytes: int) -> list[BadInput]:
    """Every bad-input kind, for a gateway whose CXR_MAX_UPLOAD_BYTES is `max_upload_bytes`."""
    jpeg = valid_jpeg
    return [
        # Bytes that are no image, or the wrong kind of image.
        _file_case("empty file", lambda: b"", 400, "empty_upload", "empty"),
        _file_case("random bytes", random_bytes, 415, "not_an_image", "JPEG, PNG or DICOM"),
        _file_case("text named .png", lambda: b"cough for three days\n" * 50, 415,
                   "not_an_image", "JPEG, PNG or DICOM", filename=b"notes.png",
                   content_type=b"image/png"),
        _file_case("HTML page", html_page, 415, "not_an_image", "JPEG, PNG or DICOM",
                   filename=b"page.html", content_type=b"text/html"),
        _file_case("SVG/XML with an external entity", svg_image, 415, "not_an_image",
                   "JPEG, PNG or DICOM", filename=b"chest.svg", content_type=b"image/svg+xml"),
        _file_case("ZIP archive of a JPEG", zip_archive, 415, "not_an_image", "archive",
                   filename=b"chest.zip", content_type=b"application/zip"),
        _file_case("PDF document", pdf_document, 415, "unsupported_format", "PDF",
                   filename=b"report.pdf", content_type=b"application/pdf"),
        _file_case("animated GIF", animated_gif, 415, "unsupported_format", "GIF",
                   filename=b"cine.gif", content_type=b"image/gif"),
        _file_case("TIFF", lambda: pillow_file("TIFF"), 415, "unsupported_format", "TIFF",
                   filename=b"chest.tif"),
        _file_case("BMP", lambda: pillow_file("BMP"), 415, "unsupported_format", "BMP",
                   filename=b"chest.bmp"),
        _file_case("WebP", lambda: pillow_file("WEBP"), 415, "unsupported_format", "WebP",
                   filename=b"chest.webp"),
        _file_case("JPEG 2000 file", lambda: pillow_file("JPEG2000"), 415, "unsupported_format",
                   "JPEG 2000", filename=b"chest.jp2"),
        _file_case("PDF declared as image/jpeg", pdf_document, 415, "unsupported_format", "PDF",
                   content_type=b"image/jpeg"),
        # Damaged images.
        _file_case("truncated JPEG", truncated_jpeg, 422, "corrupt_image", "JPEG"),
        _file_case("truncated PNG", truncated_png, 422, "corrupt_image", "PNG",
                   filename=b"cut.png"),
        _file_case("PNG with a bad CRC", png_with_bad_crc, 422, "corrupt_image",
                   "header cannot be read",
                   filename=b"crc.png"),
        _file_case("truncated DICOM", dicom_truncated, 422, "corrupt_image", "DICOM",
                   filename=b"cut.dcm"),
        # Sizes.
        _file_case("PNG bomb (header declares 40000 x 40000)",
                   lambda: xray_files.png_with_declared_size(40_000, 40_000), 413,
                   "image_too_large", "1,600,000,000 pixels; the largest accepted image has "
                   "100,000,000", filename=b"bomb.png"),
        _file_case("PNG bomb (110 Mpx of real pixels in ~110 kB)", png_bomb_real, 413,
                   "image_too_large", "pixels", filename=b"bomb.png"),
        _file_case("JPEG declaring 65000 x 65000", jpeg_with_huge_dimensions, 413,
                   "image_too_large", "the largest accepted image has 100,000,000 pixels"),
        _file_case("DICOM declaring 60000 x 60000", dicom_huge_dimensions, 413,
                   "image_too_large", "pixels", filename=b"huge.dcm"),
        _file_case("1 x 1 PNG", lambda: gray_png(1, 1), 422, "image_too_small", "at least",
                   filename=b"dot.png"),
        _file_case("8 x 8 JPEG", lambda: gray_jpeg(8, 8), 422, "image_too_small", "at least"),
        _file_case("4000 x 8 PNG (one side too small)", lambda: gray_png(8, 4000), 422,
                   "image_too_small", "at least", filename=b"strip.png"),
        _file_case("file over CXR_MAX_UPLOAD_BYTES (multipart framing within the limit)",
                   lambda: b"\xff\xd8\xff" + b"\x00" * max_upload_bytes, 413,
                   "image_too_large", "bytes"),
        # DICOM objects that are not one X-ray image.
        _file_case("DICOM without pixel data (SR)", xray_files.dicom_without_pixels, 422,
                   "invalid_dicom", "pixel data", filename=b"report.dcm"),
        _file_case("multi-frame DICOM", dicom_multiframe, 422, "invalid_dicom", "frames",
                   filename=b"cine.dcm"),
        _file_case("DICOM in PALETTE COLOR", dicom_palette_colour, 415, "unsupported_format",
                   "PALETTE COLOR", filename=b"palette.dcm"),
        _file_case("DICOM in an undecodable transfer syntax",
                   lambda: xray_files.dicom_with_foreign_compression(MPEG2MPML), 415,
                   "unsupported_format", "compressed", filename=b"odd.dcm"),
        # Valid DICOM images whose header says they are not a frontal chest radiograph.
        _file_case("CT slice (CT Image Storage)",
                   lambda: dicom_xray(SOPClassUID=CTImageStorage, Modality="CT",
                                      BodyPartExamined="HEAD"), 422, "not_a_chest_radiograph",
                   "SOP class", filename=b"ct.dcm"),
        _file_case("ultrasound modality in an X-ray SOP class",
                   lambda: dicom_xray(Modality="US"), 422, "not_a_chest_radiograph",
                   "modality US", filename=b"us.dcm"),
        _file_case("DX of another body part", lambda: dicom_xray(BodyPartExamined="KNEE"), 422,
                   "not_a_chest_radiograph", "Body Part Examined is KNEE", filename=b"knee.dcm"),
        _file_case("lateral chest film", lambda: dicom_xray(ViewPosition="LL"), 422,
                   "not_a_chest_radiograph", "View Position is LL", filename=b"lateral.dcm"),
        # Pixels that cannot be a radiograph, whatever the format says (pixel checks).
        _file_case("colour photograph", colour_photo, 422, "not_a_chest_radiograph", "in colour",
                   filename=b"photo.jpeg"),
        _file_case("noise", noise_png, 422, "not_a_chest_radiograph", "noise",
                   filename=b"noise.png"),
        _file_case("all-black image", lambda: xray_files.png_bytes(np.zeros((256, 256),
                                                                           np.uint8)),
                   422, "not_a_chest_radiograph", "blank", filename=b"black.png"),
        _file_case("chest DX DICOM whose window maps every pixel to one value",
                   lambda: dicom_xray(WindowCenter=60000, WindowWidth=10), 422,
                   "not_a_chest_radiograph", "blank", filename=b"windowed.dcm"),
        # Hostile file names: refused for their bytes, and the name is never used as a path.
        _file_case("path traversal file name", random_bytes, 415, "not_an_image",
                   "JPEG, PNG or DICOM", filename=TRAVERSAL_NAME.encode()),
        _file_case("NUL bytes in the file name", random_bytes, 415, "not_an_image",
                   "JPEG, PNG or DICOM", filename=b"x\x00.jpeg\x00../../x"),
        _file_case("5000-character file name (part header over 4 KiB)", random_bytes, 400,
                   "invalid_multipart", "header size", filename=b"a" * 5000 + b".jpeg"),
        # Broken requests.
        _request_case("body over the request limit", 413, "upload_too_large", "bytes",
                      lambda: upload(b"\xff\xd8\xff" + b"\x00" * (max_upload_bytes + 100_000))),
        _request_case("no body at all", 422, "invalid_request", "file",
                      lambda: RequestSpec("POST", UPLOAD)),
        _request_case("raw JPEG body, not multipart", 422, "invalid_request", "file",
                      lambda: RequestSpec("POST", UPLOAD, jpeg(),
                                          {"Content-Type": "image/jpeg"})),
        _request_case("JSON body", 422, "invalid_request", "file",
                      lambda: RequestSpec("POST", UPLOAD, b'{"file": "x"}',
                                          {"Content-Type": "application/json"})),
        _request_case("multipart without the file field", 422, "invalid_request", "file",
                      lambda: RequestSpec("POST", UPLOAD,
                                          multipart(Part("image", jpeg())),
                                          {"Content-Type": MULTIPART_TYPE})),
        _request_case("file field sent as plain text", 422, "invalid_request", "file",
                      lambda: RequestSpec("POST", UPLOAD,
                                          multipart(Part("file", b"hello", filename=None,
                                                         content_type=None)),
                                          {"Content-Type": MULTIPART_TYPE})),
        _request_case("two file parts", 422, "too_many_files", "one X-ray per request",
                      lambda: RequestSpec("POST", UPLOAD,
                                          multipart(Part("file", jpeg()),
                                                    Part("file", valid_png(),
                                                         filename=b"b.png")),
                                          {"Content-Type": MULTIPART_TYPE})),
        _request_case("1.5 MB text form field", 400, "invalid_multipart", "maximum size",
                      lambda: RequestSpec("POST", UPLOAD,
                                          multipart(Part("note", b"x" * 1_500_000,
                                                         filename=None, content_type=None),
                                                    Part("file", jpeg())),
                                          {"Content-Type": MULTIPART_TYPE})),
        _request_case("multipart body cut off (no closing boundary)", 422, "invalid_request",
                      "closing boundary",
                      lambda: RequestSpec("POST", UPLOAD,
                                          multipart(Part("file", jpeg()), closed=False)[:-500],
                                          {"Content-Type": MULTIPART_TYPE})),
        _request_case("multipart without a boundary parameter", 400, "invalid_multipart",
                      "boundary",
                      lambda: RequestSpec("POST", UPLOAD, multipart(Part("file", jpeg())),
                                          {"Content-Type": "multipart/form-data"})),
        _request_case("Idempotency-Key with a space", 400, "invalid_idempotency_key",
                      "Idempotency-Key",
                      lambda: upload(jpeg(), headers={"Idempotency-Key": "two words"})),
        _request_case("Idempotency-Key of 201 characters", 400, "invalid_idempotency_key",
                      "Idempotency-Key",
                      lambda: upload(jpeg(), headers={"Idempotency-Key": "k" * 201})),
        _request_case("job id that is not a UUID", 404, "job_not_found", "no prediction job",
                      lambda: RequestSpec("GET", f"{UPLOAD}/not-a-uuid")),
        _request_case("heatmap of a job id that is not a UUID", 404, "job_not_found",
                      "no prediction job",
                      lambda: RequestSpec("GET", f"{UPLOAD}/not-a-uuid/heatmap")),
        _request_case("job id with a space", 422, "invalid_request", "job_id",
                      lambda: RequestSpec("GET", f"{UPLOAD}/a%20b")),
        _request_case("job id of 129 characters", 422, "invalid_request", "job_id",
                      lambda: RequestSpec("GET", f"{UPLOAD}/{'a' * 129}")),
        _request_case("job id '..' (percent-encoded)", 404, "job_not_found", "no prediction job",
                      lambda: RequestSpec("GET", f"{UPLOAD}/%2E%2E")),
        _request_case("wait that is not a number", 422, "invalid_request", "wait",
                      lambda: RequestSpec("GET", f"{UPLOAD}/not-a-uuid?wait=soon")),
        _request_case("negative wait", 422, "invalid_request", "wait",
                      lambda: RequestSpec("GET", f"{UPLOAD}/not-a-uuid?wait=-1")),
    ]


# Unusual inputs that are valid X-rays and must be accepted (202), with what the record says.
def accepted_inputs() -> list[tuple[str, Callable[[], bytes], dict[str, object]]]:
    gray = np.asarray(Image.open(sample_xray()).convert("L"))
    rgb = Image.fromarray(np.stack([gray] * 3, axis=2), "RGB")  # a grey film in an RGB file
    rgb_photo = xray_files.jpeg_bytes(rgb)
    cmyk = xray_files.jpeg_bytes(rgb.convert("CMYK"))
    sixteen_bit = xray_files.png_bytes(xray_files.gradient(128, 160, 0, 4000, np.uint16))
    return [
        ("grey film saved as RGB (read as luma)", lambda: rgb_photo,
         {"format": "jpeg", "mode": "RGB"}),
        ("grey film saved as CMYK JPEG (read as luma)", lambda: cmyk,
         {"format": "jpeg", "mode": "CMYK"}),
        ("16-bit grayscale PNG", lambda: sixteen_bit, {"format": "png", "bit_depth": 16}),
        ("frontal chest DX DICOM", lambda: dicom_xray(), {"format": "dicom", "Modality": "DX"}),
        ("Secondary Capture export, no body part or view",
         lambda: dicom_xray(SOPClassUID=SecondaryCaptureImageStorage, Modality="OT",
                            BodyPartExamined="", ViewPosition=""),
         {"format": "dicom", "Modality": "OT"}),
    ]
