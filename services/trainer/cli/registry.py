"""Subcommands `retrain`, `approve`, `reject`, `promote`, `rollback`, `publish` and `bootstrap`.

Each prints one JSON summary on stdout; registry refusals (approving a version whose gates failed,
a version that failed the gate without `--force`, nothing to roll back to) are one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys

from services.trainer.data.manifest import parse_cutoff
from services.trainer.settings import get_settings
from shared.jobs import JobStore
from shared.redis_clients import redis_client
from shared.shadow import shadow_agreement
from shared.storage import get_storage


def _settings():
    return get_settings()


# Where `_print` writes the summary while a registry handler runs with library prints (MLflow's
# run links) sent to stderr.
_summary_streams: list = []


def _print(summary) -> int:
    if dataclasses.is_dataclass(summary):
        summary = dataclasses.asdict(summary)
    out = _summary_streams[-1] if _summary_streams else sys.stdout
    print(json.dumps(summary, indent=2, default=str), file=out)
    return 0


def _registry_errors(handler):
    """Turn a registry refusal into a clear one-line error and exit status 2."""
    def run(args: argparse.Namespace) -> int:
        from services.trainer.registry.bootstrap import BootstrapError
        from services.trainer.registry.registry import RegistryError

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        _summary_streams.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return handler(args)
        except (RegistryError, BootstrapError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        finally:
            _summary_streams.pop()
    return run


@_registry_errors
def run_retrain(args: argparse.Namespace) -> int:
    from services.trainer.registry.tracking import load_manifest
    from services.trainer.retraining import retrain

    overrides = {k: v for k, v in (("epochs", args.epochs), ("max_images", args.max_images),
                                   ("batch_size", args.batch_size)) if v is not None}
    return _print(retrain(_settings(), train_overrides=overrides,
                          cutoff=parse_cutoff(args.cutoff) if args.cutoff else None,
                          manifest=load_manifest(args.manifest) if args.manifest else None))


@_registry_errors
def run_promote(args: argparse.Namespace) -> int:
    from services.trainer.registry.promotion import promote

    return _print(promote(_settings(), args.version, reason=args.reason or "", force=args.force,
                          by=args.by))


@_registry_errors
def run_approve(args: argparse.Namespace) -> int:
    from services.trainer.registry.approval import approve

    return _print(approve(_settings(), args.version, by=args.by, reason=args.reason))


@_registry_errors
def run_reject(args: argparse.Namespace) -> int:
    from services.trainer.registry.approval import reject

    return _print(reject(_settings(), args.version, by=args.by, reason=args.reason))


@_registry_errors
def run_shadow(args: argparse.Namespace) -> int:
    from services.trainer.registry.promotion import publish_shadow_registered

    return _print(publish_shadow_registered(_settings(), args.version, by=args.by))


def run_shadow_report(args: argparse.Namespace) -> int:
    """Agreement of a shadow version's stored outputs with the readers' verdicts."""
    settings = _settings()
    client = redis_client(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        report = shadow_agreement(get_storage(settings),
                                  JobStore(client, get_storage(settings)), args.version)
    finally:
        client.close()
    return _print(report.summary())


@_registry_errors
def run_rollback(args: argparse.Namespace) -> int:
    from services.trainer.registry.promotion import rollback

    return _print(rollback(_settings(), reason=args.reason, by=args.by))


@_registry_errors
def run_publish(args: argparse.Namespace) -> int:
    from services.trainer.registry.promotion import publish_registered, registry_for

    settings = _settings()
    return _print(publish_registered(registry_for(settings), settings, args.version))


@_registry_errors
def run_bootstrap(args: argparse.Namespace) -> int:
    from services.trainer.registry.bootstrap import bootstrap

    return _print(bootstrap(_settings()))


def _add_by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", default=None,
                        help="who does this, recorded in the version tags (default: login name)")


def add_retrain(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrain", help="train, log to MLflow, register as challenger and gate (promote and "
                        "publish only with CXR_RETRAIN_AUTO_PROMOTE)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--max-images", type=int, help="train on at most N images (smoke runs)")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--cutoff", help="read confirmed films confirmed at or before this ISO 8601 "
                      "instant (no offset: UTC; default: now)")
    data.add_argument("--manifest", help="train on exactly this manifest's file set (a file, or "
                      "runs:/RUN_ID for the one an earlier run logged)")
    parser.set_defaults(handler=run_retrain)


def _add_decision(subparsers: argparse._SubParsersAction, name: str, help_text: str,
                  handler) -> None:
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("--version", type=int, required=True, help="MLflow model version")
    parser.add_argument("--by", required=True, help="who decides, recorded in the version tags "
                                                    "and the audit trail")
    parser.add_argument("--reason", required=True, help="why, recorded likewise")
    parser.set_defaults(handler=handler)


def add_approve(subparsers: argparse._SubParsersAction) -> None:
    _add_decision(subparsers, "approve",
                  "make a retrained version that passed its gates the champion and publish it",
                  run_approve)


def add_reject(subparsers: argparse._SubParsersAction) -> None:
    _add_decision(subparsers, "reject", "record that a retrained version is not to serve",
                  run_reject)


def add_shadow(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shadow", help="serve a version under the `shadow` label beside the champion: it scores "
                       "live jobs without answering")
    parser.add_argument("--version", type=int, required=True, help="MLflow model version")
    _add_by(parser)
    parser.set_defaults(handler=run_shadow)


def add_shadow_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shadow-report", help="a shadow version's agreement with the readers, beside the "
                              "champion's on the same films")
    parser.add_argument("--version", type=int, required=True, help="the shadow model version")
    parser.set_defaults(handler=run_shadow_report)


def add_promote(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("promote", help="make a registered version the champion")
    parser.add_argument("--version", type=int, required=True, help="MLflow model version")
    parser.add_argument("--force", action="store_true",
                        help="promote even though the version did not pass the gate")
    parser.add_argument("--reason", help="why (required with --force)")
    _add_by(parser)
    parser.set_defaults(handler=run_promote)


def add_rollback(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rollback", help="move champion back to the previous one")
    parser.add_argument("--reason", required=True, help="why, recorded in the version tags")
    _add_by(parser)
    parser.set_defaults(handler=run_rollback)


def add_publish(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("publish", help="copy a version to the serving folder")
    parser.add_argument("--version", type=int, help="MLflow model version (default: champion)")
    parser.set_defaults(handler=run_publish)


def add_bootstrap(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bootstrap", help="register and publish the bundled model when there is no champion")
    parser.set_defaults(handler=run_bootstrap)


REGISTRY_SUBCOMMANDS = [add_retrain, add_approve, add_reject, add_shadow, add_shadow_report,
                        add_promote, add_rollback, add_publish, add_bootstrap]
