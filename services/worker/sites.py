"""The job's site operating point: read beside the serving version, cached, applied to the answer.

`OperatingPoints.get(version, site)` reads `<base>/<model>/<version>/assets.extra/sites/<site>/
operating_point.json` from the serving base (`CXR_MODEL_BASE_PATH`, local or S3), keeps it for
`CXR_SITE_OPERATING_POINT_REFRESH_S` and then reads it again, so a refitted site or a newly served
version takes effect without a restart. A site without a file is answered at the model's own
operating point. Files are written whole (rename or S3 put), so a read sees the old point or the
new one; when a read fails, the last good point of that version and site keeps answering.

`apply_operating_point` maps the model's answer to the site's: calibrated p(pneumonia), the site's
threshold and the label it gives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from services.worker.result import label_for, subtype_for
from shared.errors import CXRError, StorageError
from shared.operating_point import OperatingPoint, site_operating_point_key
from shared.schemas import ClassProbabilities, PredictionResult, SiteOperatingPoint
from shared.storage import Storage

log = logging.getLogger(__name__)


class OperatingPointUnreadableError(StorageError):
    code = "operating_point_unreadable"
    default_message = "The site's operating point could not be read; the job will be retried."


@dataclass
class _Entry:
    point: OperatingPoint | None
    read_at: float


class OperatingPoints:
    """Site operating points per (version, site), re-read every `refresh_s` seconds."""

    def __init__(self, storage: Storage | Callable[[], Storage], model_name: str,
                 refresh_s: float) -> None:
        # A callable is opened on first use: a worker whose serving folder is missing starts,
        # and its jobs are retried (StorageError) instead of the process failing at start-up.
        self._storage = storage
        self.model_name = model_name
        self.refresh_s = refresh_s
        self._entries: dict[tuple[int, str], _Entry] = {}
        self._lock = threading.Lock()

    def get(self, version: int, site: str) -> OperatingPoint | None:
        """The site's point for `version`, or None when the site has none (model's own point)."""
        key = (version, site)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and now - entry.read_at < self.refresh_s:
            return entry.point
        try:
            point = self._read(version, site)
        except CXRError as error:
            if entry is None:
                raise
            log.warning("site %s, version %d: keeping the operating point read before (%s)",
                        site, version, error.message)
            point = entry.point
        with self._lock:
            self._entries[key] = _Entry(point, now)
        return point

    @property
    def storage(self) -> Storage:
        if callable(self._storage):
            try:
                self._storage = self._storage()
            except OSError as error:
                raise StorageError(f"The serving folder cannot be opened: {error}") from error
        return self._storage

    def _read(self, version: int, site: str) -> OperatingPoint | None:
        try:
            key = site_operating_point_key(self.model_name, version, site)
        except ValueError:  # not a usable site name: no file can exist for it
            return None
        if not self.storage.exists(key):
            return None
        data = self.storage.get(key)
        try:
            point = OperatingPoint.from_json(data)
        except ValidationError as error:
            raise OperatingPointUnreadableError(
                f"{key} is not a valid operating point: {error.errors()[0]['msg']}") from error
        if point.site != site or point.model_version not in (None, version):
            raise OperatingPointUnreadableError(
                f"{key} holds the point of site {point.site!r}, version {point.model_version}")
        return point


def apply_operating_point(result: PredictionResult, site: str,
                          point: OperatingPoint | None) -> PredictionResult:
    """The result at the site's operating point, or at the model's own when `point` is None.

    The pneumonia classes are rescaled together so that they still sum to the calibrated
    p(pneumonia) and the subtype they lean to is unchanged.
    """
    if point is None:
        return result.model_copy(update={"operating_point": SiteOperatingPoint(
            site=site, threshold=result.threshold, calibrated_by="model")})
    p_model = result.pneumonia_probability
    p_site = point.calibrate(p_model)
    classes = result.class_probabilities
    if p_model > 0:
        scale = p_site / p_model
        bacterial, viral = classes.bacterial * scale, classes.viral * scale
    else:
        bacterial = viral = p_site / 2
    calibrated = ClassProbabilities(normal=min(max(1.0 - p_site, 0.0), 1.0),
                                    bacterial=min(bacterial, 1.0), viral=min(viral, 1.0))
    label = label_for(p_site, point.threshold)
    return result.model_copy(update={
        "pneumonia_probability": p_site,
        "class_probabilities": calibrated,
        "threshold": point.threshold,
        "label": label,
        "subtype": subtype_for(label, calibrated),
        "operating_point": SiteOperatingPoint(site=site, threshold=point.threshold,
                                              calibrated_by="site", fitted_at=point.fitted_at),
    })
