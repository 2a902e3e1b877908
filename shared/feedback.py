"""Reader feedback: a confirmed or corrected film becomes labelled training data of its site.

`confirm(...)` records a reader's verdict on a succeeded job: the job record's `feedback` (shown
by `GET /v1/predictions/{job_id}`) and, under the site's prefix in storage
(`shared.jobs.keys.confirmed_site_prefix`), a copy of the job's stored upload (de-identified) and a
small JSON label (`ConfirmedFilm`). A later feedback on the same job replaces the label; the
audit trail keeps every one. The free-text comment stays on the job record: it is never logged
and never copied into the training data.

Deleting a job does not delete its confirmed film: the training data of a site belongs to the
site's data set from the moment a reader confirmed it (docs/architecture.md, "Storage").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.jobs.keys import (
    CONFIRMED_LABEL_FILE,
    confirmed_film_key,
    confirmed_label_key,
    confirmed_site_prefix,
)
from shared.jobs.records import JobRecord
from shared.jobs.store import JobStore
from shared.schemas import Feedback, ModelRef, Probability, ReaderFeedback, UTCDateTime, utc_now
from shared.storage import Storage
from shared.upload_privacy import deidentified_dicom

DICOM_MEDIA_TYPE = "application/dicom"


class ModelAnswer(BaseModel):
    """What the model answered for the film, as the reader saw it."""

    model_config = ConfigDict(protected_namespaces=())

    label: Literal["NORMAL", "PNEUMONIA"]
    subtype: Literal["bacterial", "viral"] | None = None
    pneumonia_probability: Probability
    threshold: Probability
    model: ModelRef


class ConfirmedFilm(BaseModel):
    """The label JSON beside a confirmed film (`confirmed/{site}/{job_id}/label.json`)."""

    job_id: str
    site: str
    film: str = Field(description="Storage key of the film beside this label.")
    content_type: str | None = None
    source: Literal["api", "dicom"]
    label: Literal["NORMAL", "PNEUMONIA"]
    subtype: Literal["bacterial", "viral"] | None = None
    reader: str
    revision: int
    confirmed_at: UTCDateTime
    model_answer: ModelAnswer


@dataclass(frozen=True)
class Confirmation:
    """The job after the feedback, and the feedback it replaced (None for a first one)."""

    record: JobRecord
    replaced: Feedback | None

    @property
    def feedback(self) -> Feedback:
        assert self.record.feedback is not None
        return self.record.feedback


def film_bytes(storage: Storage, record: JobRecord) -> bytes:
    """The job's stored upload, de-identified if it is a DICOM that still carries identifiers."""
    data = storage.get(record.upload_key)
    if record.content_type == DICOM_MEDIA_TYPE:
        return deidentified_dicom(data)
    return data  # JPEG and PNG uploads were stored without their metadata (upload_privacy)


def confirm(storage: Storage, jobs: JobStore, job_id: str, verdict: ReaderFeedback,
            client: str) -> Confirmation:
    """Record `verdict` on succeeded job `job_id` and store the film as training data of its site.

    The film and its label are written before the record changes (inside the record's checked
    update, so of two concurrent feedbacks the one committed last also wrote its label last);
    JobNotFinishedError / JobHasNoResultError when the job has no result to confirm.
    """
    replaced: list[Feedback | None] = [None]

    def make(record: JobRecord) -> Feedback:
        assert record.result is not None  # checked by JobStore.set_feedback
        previous = record.feedback
        replaced[0] = previous
        feedback = Feedback(**verdict.model_dump(), confirmed_at=utc_now(), client_id=client,
                            revision=previous.revision + 1 if previous else 1,
                            agrees=verdict.label == record.result.label)
        store_confirmed_film(storage, record, feedback)
        return feedback

    record = jobs.set_feedback(job_id, make)
    return Confirmation(record, replaced[0])


def store_confirmed_film(storage: Storage, record: JobRecord, feedback: Feedback) -> ConfirmedFilm:
    """Write the film (once) and its label under the site's prefix; returns the label."""
    assert record.result is not None
    film_key = confirmed_film_key(record.site, record.job_id, record.content_type)
    if not storage.exists(film_key):
        storage.put(film_key, film_bytes(storage, record),
                    content_type=record.content_type or "application/octet-stream")
    result = record.result
    label = ConfirmedFilm(
        job_id=record.job_id, site=record.site, film=film_key, content_type=record.content_type,
        source=record.source, label=feedback.label, subtype=feedback.subtype,
        reader=feedback.reader, revision=feedback.revision, confirmed_at=feedback.confirmed_at,
        model_answer=ModelAnswer(label=result.label, subtype=result.subtype,
                                 pneumonia_probability=result.pneumonia_probability,
                                 threshold=result.threshold, model=result.model))
    storage.put(confirmed_label_key(record.site, record.job_id),
                label.model_dump_json(indent=2).encode(), content_type="application/json")
    return label


def confirmed_labels(storage: Storage, site: str) -> list[ConfirmedFilm]:
    """Every confirmed film's label at `site`, by job id (for training and for tests)."""
    return [ConfirmedFilm.model_validate_json(storage.get(key))
            for key in storage.list(confirmed_site_prefix(site))
            if key.endswith(f"/{CONFIRMED_LABEL_FILE}")]
