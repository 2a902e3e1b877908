"""Publish a model version to the serving folder, in TensorFlow Serving's layout and config format.

`<base>/<model_name>/<N>/` (N = the MLflow model version) holds the SavedModel, and
`<base>/models.config` (TF Serving's `ModelServerConfig` text format) names the versions to load
(`specific` version policy) and the `stable` label. `<base>` is `CXR_MODEL_BASE_PATH`: a local
folder or `s3://bucket/prefix`.

A half-written version is never loaded: on a local disk the folder is copied under a hidden name
and renamed into place; on S3 (no rename) `saved_model.pb` is written last, and in both cases the
config naming the version is written only after the version is complete, so a model server that
follows the config never even looks at an unfinished folder.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from shared.contract import SHADOW_LABEL, STABLE_LABEL
from shared.operating_point import OperatingPoint, site_operating_point_key
from shared.storage import LocalStorage, S3Storage, Storage, storage_at

log = logging.getLogger(__name__)

CONFIG_KEY = "models.config"
SAVED_MODEL_FILE = "saved_model.pb"


@dataclass(frozen=True)
class PublishedVersion:
    version: int
    versions_served: list[int]
    model_base_path: str
    config_path: str


def serving_storage(base_path: str, s3_endpoint_url: str | None = None,
                    s3_region: str | None = None) -> Storage:
    """The serving base as a `Storage`: `s3://bucket/prefix` or a local folder."""
    return storage_at(base_path, s3_endpoint_url, s3_region)


def storage_uri(storage: Storage, key: str = "") -> str:
    """What a model server is told for `key`: an absolute path or an `s3://` URI."""
    if isinstance(storage, S3Storage):
        return f"s3://{storage.bucket}/{storage.prefix}{key}".rstrip("/")
    if isinstance(storage, LocalStorage):
        return str(storage.root / key) if key else str(storage.root)
    raise TypeError(f"cannot name a serving location in {storage!r}")


def render_models_config(model_name: str, model_base_path: str, versions: Sequence[int],
                         stable: int | None, labels: Mapping[str, int] | None = None) -> str:
    """TF Serving's model config text: the given versions loaded, `stable` on one (or none),
    and any other `labels` (label -> version, each one of `versions`)."""
    if stable is not None and stable not in versions:
        raise ValueError(f"the stable version {stable} must be one of the served {list(versions)}")
    for label, labelled in (labels or {}).items():
        if labelled not in versions:
            raise ValueError(f"label {label!r} names version {labelled}, not one of the served "
                             f"{list(versions)}")
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(sorted(set(versions)))
    if stable is not None:
        model.version_labels[STABLE_LABEL] = stable
    for label, labelled in sorted((labels or {}).items()):
        model.version_labels[label] = labelled
    return text_format.MessageToString(config)


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def has_version(storage: Storage, model_name: str, version: int) -> bool:
    return storage.exists(f"{model_name}/{version}/{SAVED_MODEL_FILE}")


def copy_version(storage: Storage, saved_model_dir: str | Path, model_name: str,
                 version: int) -> None:
    """Copy a SavedModel folder to `<model_name>/<version>/`; an existing version is kept as is."""
    if has_version(storage, model_name, version):
        log.info("%s version %d is already in %s", model_name, version, storage)
        return
    source = Path(saved_model_dir)
    if not (source / SAVED_MODEL_FILE).is_file():
        raise FileNotFoundError(f"{source} holds no {SAVED_MODEL_FILE}")
    if isinstance(storage, LocalStorage):
        _copy_local(storage.root / model_name, source, version)
    else:
        _copy_objects(storage, source, f"{model_name}/{version}")
    log.info("copied %s version %d into %s", model_name, version, storage)


def _copy_local(model_dir: Path, source: Path, version: int) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    if final.exists():  # a folder without saved_model.pb: left by a crash before this code
        shutil.rmtree(final)
    # A dot-name is not a version number, so a model server polling the folder skips it.
    staging = Path(tempfile.mkdtemp(prefix=f".publish-{version}-", dir=model_dir))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_objects(storage: Storage, source: Path, prefix: str) -> None:
    files = sorted(p for p in source.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == SAVED_MODEL_FILE)  # the loader's entry point goes last
    for path in files:
        storage.put(f"{prefix}/{path.relative_to(source).as_posix()}", path.read_bytes())


def write_site_points(storage: Storage, model_name: str, version: int,
                      site_points: Mapping[str, OperatingPoint]) -> None:
    """Each site's operating point into the version folder (each file lands whole)."""
    for site, point in sorted(site_points.items()):
        point = point.model_copy(update={"model_version": version})
        storage.put(site_operating_point_key(model_name, version, site), point.to_json(),
                    content_type="application/json")


def publish_version(saved_model_dir: str | Path, version: int, *, storage: Storage,
                    model_name: str, keep_versions: Sequence[int] = (),
                    wait_until_loaded: Callable[[int], bool] | None = None,
                    site_points: Mapping[str, OperatingPoint] | None = None) -> PublishedVersion:
    """Copy the version in, then point `models.config` at it (plus `keep_versions` present).

    `site_points` (site -> operating point) are written into the version folder before any
    config names it, so the version never serves without its sites' points.

    With `wait_until_loaded`, the config is written twice, as TF Serving wants for a label swap:
    first the new version is listed with `stable` left where it was, then, once the server has
    loaded it, `stable` moves to it.
    """
    copy_version(storage, saved_model_dir, model_name, version)
    write_site_points(storage, model_name, version, site_points or {})
    kept = [v for v in keep_versions if v != version and has_version(storage, model_name, v)]
    served = sorted({version, *kept})
    base_uri = storage_uri(storage, model_name)
    if wait_until_loaded is not None:
        current = _current_stable(storage, model_name)
        interim = current if current in served and current != version else None
        _write_config(storage, render_models_config(model_name, base_uri, served, interim))
        wait_until_loaded(version)
    _write_config(storage, render_models_config(model_name, base_uri, served, stable=version))
    log.info("published %s version %d to %s (serving %s)", model_name, version, base_uri, served)
    return PublishedVersion(version, served, base_uri, storage_uri(storage, CONFIG_KEY))


def publish_shadow(saved_model_dir: str | Path, version: int, *, storage: Storage,
                   model_name: str, wait_until_loaded: Callable[[int], bool] | None = None,
                   site_points: Mapping[str, OperatingPoint] | None = None) -> PublishedVersion:
    """Serve `version` beside the champion under the `shadow` label; `stable` does not move.

    The workers with `CXR_SHADOW_VERSION_LABEL=shadow` then score every answered job with it too
    (`services.worker.shadow`). The next champion publish drops the label and the version.
    """
    stable = _current_stable(storage, model_name)
    if stable is None:
        raise ValueError("nothing is published yet: a shadow version runs beside a champion")
    if stable == version:
        raise ValueError(f"version {version} is the champion already")
    copy_version(storage, saved_model_dir, model_name, version)
    write_site_points(storage, model_name, version, site_points or {})
    served = sorted({*_current_versions(storage, model_name), stable, version})
    base_uri = storage_uri(storage, model_name)
    if wait_until_loaded is not None:  # a label goes only onto a loaded version
        _write_config(storage, render_models_config(model_name, base_uri, served, stable))
        wait_until_loaded(version)
    _write_config(storage, render_models_config(model_name, base_uri, served, stable,
                                                {SHADOW_LABEL: version}))
    log.info("%s version %d published as %s beside stable %d", model_name, version,
             SHADOW_LABEL, stable)
    return PublishedVersion(version, served, base_uri, storage_uri(storage, CONFIG_KEY))


def _current_versions(storage: Storage, model_name: str) -> list[int]:
    """The versions the current config serves."""
    if not storage.exists(CONFIG_KEY):
        return []
    config = parse_models_config(storage.get(CONFIG_KEY).decode())
    return [v for model in config.model_config_list.config if model.name == model_name
            for v in model.model_version_policy.specific.versions]


def _write_config(storage: Storage, text: str) -> None:
    storage.put(CONFIG_KEY, text.encode(), content_type="text/plain")


def _current_stable(storage: Storage, model_name: str) -> int | None:
    """The version `stable` names in the config being replaced (None without one)."""
    if not storage.exists(CONFIG_KEY):
        return None
    try:
        config = parse_models_config(storage.get(CONFIG_KEY).decode())
    except text_format.ParseError:
        log.warning("the existing %s does not parse; replacing it", CONFIG_KEY)
        return None
    for model in config.model_config_list.config:
        if model.name == model_name and STABLE_LABEL in model.version_labels:
            return model.version_labels[STABLE_LABEL]
    return None
