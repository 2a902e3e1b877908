"""File names given only as `filename*=UTF-8''...` (RFC 5987, allowed by RFC 7578) in a
multipart part's Content-Disposition.

python-multipart keeps only a plain `filename` parameter, so Starlette would treat such a part as
a text field and the upload would be refused. `install()` wraps the header parser Starlette's
form parser uses: when a part has `filename*` and no `filename`, the decoded name is added as
`filename`, and the part is read as the file it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import decode_rfc2231
from urllib.parse import unquote

import starlette.formparsers

_EXTENDED_FILENAME = re.compile(rb";\s*filename\*\s*=\s*([^;]+)", re.IGNORECASE)
Parser = Callable[..., tuple[bytes, dict[bytes, bytes]]]


def extended_filename(header: bytes) -> bytes | None:
    """The decoded `filename*` of a Content-Disposition value, as UTF-8; None when absent."""
    match = _EXTENDED_FILENAME.search(header)
    if match is None:
        return None
    raw = match.group(1).strip().strip(b'"').decode("latin-1")
    charset, _language, encoded = decode_rfc2231(raw)
    try:
        name = unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        name = unquote(encoded, encoding="utf-8", errors="replace")
    return name.encode("utf-8")


def _with_extended_filenames(parse: Parser) -> Parser:
    def parse_options_header(value: bytes | str | None) -> tuple[bytes, dict[bytes, bytes]]:
        disposition, options = parse(value)
        if value and b"filename" not in options:
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            name = extended_filename(raw)
            if name is not None:
                options = {**options, b"filename": name}
        return disposition, options

    parse_options_header.wrapped = parse  # type: ignore[attr-defined]
    return parse_options_header


def install() -> None:
    """Idempotent: wrap Starlette's multipart header parser once."""
    current = starlette.formparsers.parse_options_header
    if current is not None and not hasattr(current, "wrapped"):
        starlette.formparsers.parse_options_header = _with_extended_filenames(current)
