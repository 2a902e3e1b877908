"""Every storage key and Redis key of a job (layout in docs/architecture.md, "Storage").

Storage: the durable record `jobs/{job_id}.json`, the open-jobs marker `jobs-open/{job_id}`, the
client-index marker `jobs-by-client/c-{client}/{created}-{job_id}`, the upload `uploads/{job_id}`,
the result `results/{job_id}.json`, the Grad-CAM map and its overlay under `heatmaps/`, the shadow
answer under `shadow/` and the films readers confirmed under `confirmed/{site}/{job_id}/`.

Redis: the cached record `cxr:job:{job_id}`, the delivery lock `cxr:job-lock:{job_id}`, the
"finished" channel `cxr:job-finished:{job_id}` and the sorted set `cxr:jobs:in-flight` of accepted
jobs not finished yet (`shared.jobs.store`). The delete and the retention purge
(`shared.retention`) remove exactly what these name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from shared.jobs.records import JOB_ID_CHARS, JobRecord
from shared.operating_point import check_site_name

# --- Redis ---


def redis_key(job_id: str) -> str:
    """The record's Redis copy (with a TTL; storage holds the durable one)."""
    return f"cxr:job:{job_id}"


def job_lock_key(job_id: str) -> str:
    """The lock one delivery of `cxr.predict` holds while it runs the job."""
    return f"cxr:job-lock:{job_id}"


def finished_channel(job_id: str) -> str:
    """The Redis pub/sub channel that hears the job's final status once it has finished."""
    return f"cxr:job-finished:{job_id}"


# Accepted jobs not finished yet, scored by when the project last saw each one move (queued,
# started, re-queued): what the reconciler reads instead of the broker's own layout.
IN_FLIGHT_KEY = "cxr:jobs:in-flight"

# --- Storage: the record and its indexes ---


def storage_key(job_id: str) -> str:
    """The durable record."""
    return f"jobs/{job_id}.json"


OPEN_PREFIX = "jobs-open/"


def open_marker_key(job_id: str) -> str:
    """The empty marker of a job not finished yet."""
    return f"{OPEN_PREFIX}{job_id}"


CLIENT_INDEX_PREFIX = "jobs-by-client/"
_STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
# The name of one client-index marker: creation stamp, then the job id. Also the list cursor.
INDEX_ENTRY_PATTERN = rf"^\d{{8}}T\d{{12}}Z-{JOB_ID_CHARS}$"


def index_stamp(moment: datetime) -> str:
    """`moment` (timezone-aware) as the sortable UTC stamp of the client index."""
    return moment.astimezone(UTC).strftime(_STAMP_FORMAT)


def parse_index_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=UTC)


def client_index_prefix(client: str) -> str:
    """The folder of `client`'s index markers; any client name (AE titles too) is a safe key."""
    return f"{CLIENT_INDEX_PREFIX}c-{quote(client, safe='')}/"


def client_index_key(record: JobRecord) -> str:
    stamp = index_stamp(record.created_at)
    return f"{client_index_prefix(record.client_id)}{stamp}-{record.job_id}"


# --- Storage: the job's files ---


def upload_key(job_id: str) -> str:
    """The job's stored upload (DICOM de-identified, JPEG/PNG without metadata)."""
    return f"uploads/{job_id}"


def result_key(job_id: str) -> str:
    """The result JSON the worker writes beside the record."""
    return f"results/{job_id}.json"


def heatmap_key(job_id: str) -> str:
    """The overlay PNG, drawn on first read from the upload and the attention map."""
    return f"heatmaps/{job_id}.png"


def attention_key(job_id: str) -> str:
    """The Grad-CAM map as uint8 `.npy` at the model's resolution (shared.heatmap)."""
    return f"heatmaps/{job_id}.attention.npy"


SHADOW_PREFIX = "shadow/"


def shadow_key(job_id: str) -> str:
    """What a shadow model version answered for the job (`shared.shadow`); never shown to the
    client."""
    return f"{SHADOW_PREFIX}{job_id}.json"


# --- Storage: films readers confirmed ---
CONFIRMED_PREFIX = "confirmed/"
CONFIRMED_LABEL_FILE = "label.json"
FILM_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "application/dicom": "dcm"}


def confirmed_site_prefix(site: str) -> str:
    """Everything readers confirmed at `site`: one folder per film, named by its job id."""
    return f"{CONFIRMED_PREFIX}{check_site_name(site)}/"


def confirmed_film_key(site: str, job_id: str, content_type: str | None) -> str:
    """The confirmed film's image: `film.jpg`, `film.png` or `film.dcm` (else `film.bin`)."""
    extension = FILM_EXTENSIONS.get(content_type or "", "bin")
    return f"{confirmed_site_prefix(site)}{job_id}/film.{extension}"


def confirmed_label_key(site: str, job_id: str) -> str:
    """The confirmed film's label JSON (`shared.feedback.ConfirmedFilm`)."""
    return f"{confirmed_site_prefix(site)}{job_id}/{CONFIRMED_LABEL_FILE}"
