"""Subcommand `dataset`: write the training data's manifest, or rebuild a manifest's file set.

`python -m services.trainer dataset --cutoff 2026-12-01 --out manifest.json` lists the base data
set plus the confirmed films up to the cut-off (what a retraining at that instant reads);
`python -m services.trainer dataset --manifest manifest.json` (or `--manifest runs:/RUN_ID`)
fetches exactly that file set again and checks every file's sha256. Both print the fingerprint
and the counts as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.trainer.cli.common import add_data_argument
from services.trainer.data.manifest import (
    collect_training_data,
    parse_cutoff,
    rebuild_training_data,
)
from services.trainer.settings import get_settings
from shared.schemas import utc_now
from shared.storage import get_storage


def add_dataset(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dataset", help="write the training data's manifest, or rebuild one's file set")
    add_data_argument(parser)
    parser.add_argument("--cutoff",
                        help="read confirmed films confirmed at or before this ISO 8601 instant "
                        "(no offset: UTC; default: now)")
    parser.add_argument("--no-confirmed", action="store_true",
                        help="the base data set only (no confirmed films)")
    parser.add_argument("--splits", default="train,val",
                        help="base data set splits read (default %(default)s)")
    parser.add_argument("--manifest",
                        help="rebuild this manifest's file set instead (a file or runs:/RUN_ID)")
    parser.add_argument("--out", type=Path, default=Path("out/dataset/manifest.json"),
                        help="where the manifest is written (default %(default)s)")
    parser.add_argument("--films", type=Path, default=Path("out/dataset/films"),
                        help="where confirmed films are copied (default %(default)s)")
    parser.set_defaults(handler=run_dataset)


def run_dataset(args: argparse.Namespace) -> int:
    settings = get_settings()
    storage = None if args.no_confirmed else get_storage(settings)
    if args.manifest:
        from services.trainer.registry.tracking import load_manifest  # MLflow

        data = rebuild_training_data(load_manifest(args.manifest), args.data, storage,
                                     args.films)
    else:
        cutoff = parse_cutoff(args.cutoff) if args.cutoff else utc_now()
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        data = collect_training_data(args.data, splits, storage, cutoff, args.films,
                                     site_sets=settings.site_sets)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(data.manifest.to_json())
    manifest = data.manifest
    print(json.dumps({
        "fingerprint": manifest.fingerprint,
        "cutoff": manifest.cutoff.isoformat() if manifest.cutoff else None,
        "files": len(data.records), "counts": manifest.counts, "excluded": manifest.excluded,
        "manifest": str(args.manifest or args.out),
        "rebuilt": bool(args.manifest),
    }, indent=2), file=sys.stdout)
    return 0


DATASET_SUBCOMMANDS = [add_dataset]
