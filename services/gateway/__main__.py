"""`python -m services.gateway [serve | audit-export]`.

`serve` (the default): the API and web page with uvicorn (HTTPS by default).

`audit-export --since T --until T [--file PATH]`: print the audit lines written in [since, until)
from the audit file (`CXR_AUDIT_LOG`, or `--file`), one JSON line each, as written. Times are
ISO 8601 (`2026-03-01`, `2026-03-01T08:00:00+01:00`); without a zone they are UTC. Exits 0, or 2
on bad arguments or when there is no file to read (the trail goes to stdout).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2


def serve() -> int:
    import uvicorn

    from services.gateway.app import create_app
    from services.gateway.logredact import log_config
    from services.gateway.settings import get_settings
    from services.gateway.tls import tls_files

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    app = create_app(settings)
    tls = tls_files(settings)
    scheme = "https" if tls else "http"
    loopback_or_any = settings.gateway_host in ("127.0.0.1", "0.0.0.0")
    host = "localhost" if loopback_or_any else settings.gateway_host
    # stderr: stdout carries only the audit trail when CXR_AUDIT_LOG=stdout.
    print(f"cxr-pneumonia gateway on {scheme}://{host}:{settings.gateway_port}/",
          file=sys.stderr, flush=True)
    demo_key = app.state.resources.demo_key
    if demo_key:
        print(f"Development API key (client 'demo'): {demo_key}  "
              f"(also in {settings.demo_key_file})", file=sys.stderr, flush=True)
    uvicorn.run(
        app, host=settings.gateway_host, port=settings.gateway_port,
        ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None,
        server_header=False, proxy_headers=False, log_level="info", log_config=log_config(),
    )
    return EXIT_OK


def utc_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-03-01T08:00:00Z") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the API and web page (the default)")
    export = commands.add_parser("audit-export", help="print a period of the audit trail")
    export.add_argument("--since", type=utc_time, required=True, metavar="TIME",
                        help="first moment included (ISO 8601; UTC without a zone)")
    export.add_argument("--until", type=utc_time, required=True, metavar="TIME",
                        help="first moment no longer included")
    export.add_argument("--file", type=Path, metavar="PATH",
                        help="the audit file to read (default: CXR_AUDIT_LOG)")
    return parser


def audit_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from shared.audit import AUDIT_STDOUT, export_lines
    from shared.settings import SharedSettings

    if args.since >= args.until:
        parser.error("--since must be before --until")
    path: Path | None = args.file
    if path is None:
        configured = SharedSettings().audit_log
        if configured.strip().lower() == AUDIT_STDOUT:
            parser.error("CXR_AUDIT_LOG is stdout: the trail is wherever the service's stdout "
                         "is collected; pass --file to read a copy")
        path = Path(configured)
    if not path.is_file():
        parser.error(f"no audit file at {path}")
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in export_lines(lines, args.since, args.until):
            sys.stdout.write(line + "\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "audit-export":
        return audit_export(parser, args)
    return serve()


if __name__ == "__main__":
    sys.exit(main())
