"""The MLflow registry's REST API: the version behind alias `champion`, its evaluation metrics
and model card.

A version whose MLflow run holds no metrics or card (the bundled model, registered by
`bootstrap`) shows those of its own folder in the serving base (`CXR_MODEL_BASE_PATH`,
`<name>/<version>/assets.extra/metrics.json` and `model_card.md`), which travel with the version.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from shared.contract import ASSETS_EXTRA, CHAMPION_ALIAS, METRICS_FILE, MODEL_CARD_FILE
from shared.errors import CXRError
from shared.storage import Storage

log = logging.getLogger("cxr.gateway")
MODEL_CARD_ARTIFACT = "model_card.md"
MODEL_CARD_MAX_CHARS = 64_000


class RegistryInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_version: str
    alias: str = CHAMPION_ALIAS
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    model_card: str | None = Field(default=None, description=(
        "The version's description, else its run's model_card.md, else the version folder's "
        "assets.extra/model_card.md."))
    from_version_files: list[Literal["metrics", "model_card"]] = Field(
        default_factory=list, description=(
            "What was read from the served version's own assets.extra, no MLflow run holding "
            "it."))


class VersionFiles:
    """A served version's own metrics and model card, in the serving base (local or S3).

    The storage is opened at the first read, so a gateway without the serving base mounted starts
    and answers as before.
    """

    def __init__(self, open_storage: Callable[[], Storage], model_name: str) -> None:
        self._open_storage = open_storage
        self._storage: Storage | None = None
        self._model_name = model_name

    def _read(self, version: str, name: str) -> bytes | None:
        key = f"{self._model_name}/{version}/{ASSETS_EXTRA}/{name}"
        try:
            if self._storage is None:
                self._storage = self._open_storage()
            return self._storage.get(key)
        except (CXRError, OSError) as exc:  # absent (an older export), unmounted or unreachable
            log.debug("version file %s: %r", key, exc)
            return None

    def metrics(self, version: str) -> dict[str, float]:
        """`metrics.json`'s `metrics` (name -> number); {} when absent or unreadable."""
        raw = self._read(version, METRICS_FILE)
        if raw is None:
            return {}
        try:
            values = json.loads(raw).get("metrics", {})
            return {str(k): float(v) for k, v in values.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)}
        except (ValueError, AttributeError) as exc:
            log.warning("version %s: %s is not a metrics JSON (%r)", version, METRICS_FILE, exc)
            return {}

    def model_card(self, version: str) -> str | None:
        raw = self._read(version, MODEL_CARD_FILE)
        return raw.decode("utf-8", errors="replace")[:MODEL_CARD_MAX_CHARS] if raw else None


class MlflowRegistryClient:
    """MLflow's REST API: the version behind alias `champion` and its run's metrics.

    With `version_files`, a champion whose run has no metrics or card gets its folder's.
    """

    def __init__(self, http: httpx.AsyncClient, tracking_uri: str, model_name: str,
                 version_files: VersionFiles | None = None) -> None:
        self._http = http
        self._root = tracking_uri.rstrip("/")
        self._api = f"{self._root}/api/2.0/mlflow"
        self._model_name = model_name
        self._version_files = version_files

    async def champion(self) -> RegistryInfo | None:
        response = await self._http.get(
            f"{self._api}/registered-models/alias",
            params={"name": self._model_name, "alias": CHAMPION_ALIAS},
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        version: dict[str, Any] = response.json()["model_version"]
        tags = {t["key"]: str(t.get("value", "")) for t in version.get("tags", [])}
        # Versions registered from a LoggedModel carry their run only as a tag.
        run_id = version.get("run_id") or tags.get("run_id") or None
        card = version.get("description") or (await self._model_card(run_id) if run_id else None)
        info = RegistryInfo(
            model_version=str(version["version"]), run_id=run_id, tags=tags, model_card=card,
            metrics=await self._run_metrics(run_id) if run_id else {},
        )
        if self._version_files is not None and (not info.metrics or info.model_card is None):
            await asyncio.to_thread(self._fill_from_version_files, info)
        return info

    def _fill_from_version_files(self, info: RegistryInfo) -> None:
        assert self._version_files is not None
        if not info.metrics:
            info.metrics = self._version_files.metrics(info.model_version)
            if info.metrics:
                info.from_version_files.append("metrics")
        if info.model_card is None:
            info.model_card = self._version_files.model_card(info.model_version)
            if info.model_card is not None:
                info.from_version_files.append("model_card")

    async def _model_card(self, run_id: str) -> str | None:
        """The run's `model_card.md` artifact, through the server's artifact download endpoint."""
        response = await self._http.get(f"{self._root}/get-artifact",
                                        params={"path": MODEL_CARD_ARTIFACT, "run_uuid": run_id})
        if response.status_code != 200:
            return None
        return response.text[:MODEL_CARD_MAX_CHARS]

    async def _run_metrics(self, run_id: str) -> dict[str, float]:
        response = await self._http.get(f"{self._api}/runs/get", params={"run_id": run_id})
        response.raise_for_status()
        metrics = response.json()["run"]["data"].get("metrics", [])
        return {m["key"]: float(m["value"]) for m in metrics}
