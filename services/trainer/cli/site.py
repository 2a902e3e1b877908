"""Subcommand `site-calibrate`: a site's local validation report and operating point.

With `--version N` the model comes from the MLflow registry, the report is an MLflow run in the
`site-acceptance` experiment, the point is recorded on the version (tag
`site.<site>.operating_point`, so every later publish and rollback of N carries it) and written
beside the served version when N is in the serving folder. With `--model DIR --out DIR` it runs
offline: the point and the report go to `--out` only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from services.trainer.artifact.scoring import run_site_acceptance
from services.trainer.cli.common import not_an_export
from services.trainer.data.site_records import read_site_records
from services.trainer.evaluation.site_calibration import write_report
from services.trainer.settings import get_settings
from shared.operating_point import check_site_name


def _site_name(text: str) -> str:
    try:
        return check_site_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def parse_confidence(text: str) -> float | None:
    """A confidence on the command line: a number, or 'none' for the average rule."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number or 'none': {text!r}") from err


def add_site_calibrate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "site-calibrate", help="fit and validate a site's operating point on its acceptance set")
    parser.add_argument("--site", type=_site_name, required=True, help="site name")
    parser.add_argument("--data", type=Path, required=True,
                        help="the site's labelled acceptance set: NORMAL/ and PNEUMONIA/ "
                        "folders, or a CSV with columns file,label[,patient]")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--version", type=int, help="registered model version (MLflow)")
    source.add_argument("--model", type=Path, help="an exported version folder (offline)")
    parser.add_argument("--out", type=Path,
                        help="folder for operating_point.json, report.html, report.json and the "
                        "figures (required with --model)")
    parser.add_argument("--target-sensitivity", type=float,
                        help="sensitivity the site threshold must reach (CXR_TARGET_SENSITIVITY)")
    parser.add_argument("--confidence", type=parse_confidence, default=argparse.SUPPRESS,
                        help="probability that the threshold reaches it on the site's later "
                        "films, in (0, 1); 'none': reach it on average "
                        "(CXR_SITE_THRESHOLD_CONFIDENCE)")
    parser.set_defaults(handler=run_site_calibrate)


def run_site_calibrate(args: argparse.Namespace) -> int:
    if args.model is not None and args.out is None:
        print("error: --model needs --out (offline runs write their files there)", file=sys.stderr)
        return 2
    settings = get_settings()
    target = args.target_sensitivity or settings.target_sensitivity
    if not 0 < target <= 1:
        print(f"error: --target-sensitivity must be in (0, 1], got {target}", file=sys.stderr)
        return 2
    confidence = getattr(args, "confidence", settings.site_threshold_confidence)
    if confidence is not None and not 0 < confidence < 1:
        print(f"error: --confidence must be in (0, 1), got {confidence}", file=sys.stderr)
        return 2
    records = read_site_records(args.data)
    with tempfile.TemporaryDirectory(prefix="cxr-site-") as scratch:
        if args.model is not None:
            if not_an_export(args.model):
                return 2
            result = run_site_acceptance(args.site, args.model, records,
                                         target_sensitivity=target, confidence=confidence,
                                         model_name=settings.model_name)
            files = write_report(result, args.out)
        else:
            result, files = _registered(args, settings, records, target, confidence,
                                        Path(scratch))
    print(json.dumps(summary(result.report), indent=2))
    print(f"report: {files['report_html']}")
    return 0


def _registered(args, settings, records, target: float, confidence: float | None,
                scratch: Path):
    from services.trainer.registry.promotion import registry_for, site_tag
    from services.trainer.registry.publish import has_version, serving_storage, write_site_points
    from services.trainer.registry.tracking import log_site_run

    registry = registry_for(settings)
    model_dir = registry.download_saved_model(args.version, scratch / "model")
    result = run_site_acceptance(args.site, model_dir, records, target_sensitivity=target,
                                 confidence=confidence, model_name=settings.model_name,
                                 model_version=args.version)
    files = write_report(result, args.out or scratch / "report")
    run_id = log_site_run(result, files, args.version)
    registry.tag_version(args.version, {site_tag(args.site): result.point.model_dump_json(),
                                        f"site.{args.site}.run_id": run_id})
    storage = serving_storage(settings.model_base_path, settings.s3_endpoint_url,
                              settings.s3_region)
    if has_version(storage, settings.model_name, args.version):
        write_site_points(storage, settings.model_name, args.version, {args.site: result.point})
        print(f"published the operating point of site {args.site} beside version {args.version}")
    if args.out is None:  # the scratch report goes away with the folder; MLflow keeps it
        files = {**files, "report_html": Path(f"mlflow run {run_id}")}
    return result, files


def summary(report: dict) -> dict:
    """The numbers a reader wants first."""
    site, model = report["site_threshold"], report["model_threshold"]
    keys = ("sensitivity", "sensitivity_ci", "specificity", "specificity_ci", "ppv", "npv")
    return {
        "site": report["site"], "n": report["n"], "auroc": report["auroc"],
        "auroc_ci": report["auroc_ci"], "cross_fitted_auroc": report["cross_fitted_auroc"],
        "site_threshold": {"threshold": report["operating_point"]["threshold"],
                           **{k: site[k] for k in keys}},
        "model_threshold": {"threshold": model["threshold"], **{k: model[k] for k in keys}},
        "ece_before": report["ece_before"], "ece_after": report["ece_after"],
        "calibration": report["operating_point"]["calibration"],
    }


SITE_SUBCOMMANDS = [add_site_calibrate]
