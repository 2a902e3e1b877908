"""The `cxr.drift_check` task: every site's recent films against the served model's reference.

Celery beat (`services.trainer.celery_app`) sends it on `CXR_DRIFT_CHECK_CRON` to the `inference`
queue; `python -m services.worker drift-check` runs one pass by hand. For each site the worker
recorded films of (`shared.drift.DriftRecorder`), it reads the window (`CXR_DRIFT_WINDOW_DAYS`, at
most `CXR_DRIFT_MAX_FILMS`, the films of the version that answered last), reads that version's
`assets.extra/drift_reference.json` from the serving base (`CXR_MODEL_BASE_PATH`), runs both tests
(`shared.drift.compare`), sets the `cxr_drift_*` gauges and logs one line; a site in alert is
logged as a warning and `cxr_drift_alert{site}` is 1, which the Prometheus rule `CXRDrift` turns
into an alert (`infra/prometheus/alerts.yml`).
"""

from __future__ import annotations

import logging
import time

from services.worker import metrics
from services.worker.celery_app import app
from services.worker.settings import WorkerSettings, get_settings
from shared.drift import DriftRecorder, DriftReference, SiteDrift, compare, reference_key
from shared.errors import CXRError, ObjectNotFoundError
from shared.jobs.queue import DRIFT_CHECK_TASK
from shared.storage import Storage, storage_at

log = logging.getLogger(__name__)


def read_reference(storage: Storage, model_name: str, version: int) -> DriftReference | None:
    """The version's reference, or None when it has none (a model exported without one)."""
    try:
        return DriftReference.from_json(storage.get(reference_key(model_name, version)))
    except ObjectNotFoundError:
        return None


def run_drift_check(settings: WorkerSettings, recorder: DriftRecorder, storage: Storage,
                    now: float | None = None) -> list[SiteDrift]:
    """One pass over every recorded site; returns each compared site's figures."""
    now = time.time() if now is None else now
    references: dict[int, DriftReference | None] = {}
    results = []
    for site in recorder.sites():
        films = recorder.window(site, now)
        if films.version is None:
            log.info("drift check site=%s: no films in the window", site)
            metrics.set_drift(site, 0, False, {}, {}, now)
            continue
        if films.version not in references:
            try:
                references[films.version] = read_reference(storage, settings.model_name,
                                                           films.version)
            except (CXRError, ValueError) as error:
                log.error("drift check: the reference of version %d is unreadable: %s",
                          films.version, error)
                references[films.version] = None
        reference = references[films.version]
        if reference is None:
            log.warning("drift check site=%s version=%d: the version has no drift reference "
                        "(%s); not checked", site, films.version,
                        reference_key(settings.model_name, films.version))
            continue
        result = compare(films, reference, test=settings.drift_test,
                         threshold=settings.drift_threshold, min_films=settings.drift_min_films)
        metrics.set_drift(site, result.films, result.alert, result.ks, result.psi, now)
        if result.alert:
            log.warning("%s crossed=%s", result.log_line(), ",".join(result.crossed()))
        else:
            log.info(result.log_line())
        results.append(result)
    return results


def check_now(settings: WorkerSettings, redis_client) -> list[SiteDrift]:
    recorder = DriftRecorder(redis_client, max_films=settings.drift_max_films,
                             window_s=settings.drift_window_days * 86400)
    storage = storage_at(settings.model_base_path, settings.s3_endpoint_url, settings.s3_region)
    return run_drift_check(settings, recorder, storage)


@app.task(name=DRIFT_CHECK_TASK)
def drift_check() -> int:
    """One drift check pass; returns how many sites are in alert."""
    from services.worker.tasks import worker_deps

    deps = worker_deps()
    return sum(result.alert for result in check_now(get_settings(), deps.redis))
