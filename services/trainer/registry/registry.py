"""The MLflow model registry for one registered model: versions, aliases and their history.

Aliases, not stages: every new version gets `challenger`; `champion` marks the version served.
Each move of `champion` is recorded in the registered model's `champion.history` tag (versions,
oldest first) and in tags on the version (who, when, why), so a rollback knows where to go back to.
"""

from __future__ import annotations

import getpass
import logging
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException

from services.trainer.artifact.pyfunc_model import find_saved_model_dir
from shared.contract import CHALLENGER_ALIAS as CHALLENGER
from shared.contract import CHAMPION_ALIAS as CHAMPION

log = logging.getLogger(__name__)

HISTORY_TAG = "champion.history"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked (no champion, unknown version ...)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class ModelRegistry:
    """Registered model `name` on the tracking server of `client`."""

    def __init__(self, name: str, client: MlflowClient | None = None) -> None:
        self.name = name
        self.client = client or MlflowClient()

    # --- versions ----------------------------------------------------------------------------

    def register(self, model_uri: str, run_id: str, tags: Mapping[str, str] | None = None) -> int:
        """A new version from a logged model; it becomes the `challenger`."""
        version = mlflow.register_model(model_uri, self.name, tags=dict(tags or {}))
        number = int(version.version)
        # The run that made it, for models logged as LoggedModels (no run in the source URI).
        self.client.set_model_version_tag(self.name, str(number), "run_id", run_id)
        self.client.set_registered_model_alias(self.name, CHALLENGER, str(number))
        log.info("registered %s version %d (run %s) as %s", self.name, number, run_id, CHALLENGER)
        return number

    def version(self, number: int) -> ModelVersion:
        try:
            return self.client.get_model_version(self.name, str(number))
        except MlflowException as err:
            raise RegistryError(f"{self.name} has no version {number}") from err

    def tag_version(self, number: int, tags: Mapping[str, object]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(number), key, str(value))

    def describe(self, number: int, markdown: str) -> None:
        """Set the version's description (the MLflow UI and the gateway show it)."""
        self.client.update_model_version(self.name, str(number), description=markdown)

    def download_saved_model(self, number: int, dst: str | Path | None = None) -> Path:
        """The version's SavedModel folder, downloaded from the registry into `dst`."""
        self.version(number)
        target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="cxr-model-"))
        downloaded = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{self.name}/{number}", dst_path=str(target))
        return find_saved_model_dir(downloaded)

    # --- aliases -------------------------------------------------------------------------------

    def alias_version(self, alias: str) -> int | None:
        try:
            return int(self.client.get_model_version_by_alias(self.name, alias).version)
        except (RestException, MlflowException):
            return None

    def champion(self) -> int | None:
        return self.alias_version(CHAMPION)

    def champion_history(self) -> list[int]:
        try:
            tags = self.client.get_registered_model(self.name).tags
        except MlflowException:
            return []
        raw = tags.get(HISTORY_TAG, "")
        return [int(v) for v in raw.split(",") if v.strip()]

    def _write_history(self, history: list[int]) -> None:
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, ",".join(map(str, history)))

    def promote(self, number: int, *, reason: str, forced: bool = False,
                by: str | None = None) -> None:
        """Move `champion` to `number`, recording who, when and why on the version."""
        self.version(number)
        by = by or current_user()
        previous = self.champion()
        self.client.set_registered_model_alias(self.name, CHAMPION, str(number))
        history = [v for v in self.champion_history() if v != number]
        if previous is not None and (not history or history[-1] != previous):
            history.append(previous)
        self._write_history([*history, number])
        self.tag_version(number, {
            "promoted_at": _now(), "promoted_by": by, "promotion_reason": reason,
            "promotion_forced": str(forced).lower(), "previous_champion": previous or "none",
        })
        log.info("%s version %d is now %s (was %s; %s%s)", self.name, number, CHAMPION, previous,
                 reason, ", forced" if forced else "")

    def rollback(self, *, reason: str, by: str | None = None) -> tuple[int, int]:
        """Move `champion` back to the champion before it; returns (from, to)."""
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.name} has no champion to roll back from")
        earlier = [v for v in self.champion_history() if v != current]
        if not earlier:
            raise RegistryError(
                f"{self.name} version {current} is the only champion so far: "
                "nothing to roll back to")
        target = earlier[-1]
        by = by or current_user()
        self.client.set_registered_model_alias(self.name, CHAMPION, str(target))
        self._write_history(earlier)
        self.tag_version(current, {"rolled_back_at": _now(), "rolled_back_by": by,
                                   "rollback_reason": reason, "rolled_back_to": target})
        self.tag_version(target, {"restored_at": _now(), "restored_by": by,
                                  "restored_from": current})
        log.info("%s rolled back from version %d to %d (%s)", self.name, current, target, reason)
        return current, target
