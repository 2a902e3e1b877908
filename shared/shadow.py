"""Shadow scoring: what a second model version answered for a job, kept beside the job's result.

The worker (`services.worker.shadow`) scores each answered job again with the version the model
server labels `CXR_SHADOW_VERSION_LABEL` and stores a `ShadowOutput` at
`shared.jobs.keys.shadow_key` (`shadow/{job_id}.json`). It is never part of the client's answer;
it exists so that the shadow version's agreement with the readers (their feedback on the job,
`shared.feedback`) is known before anyone approves it. `shadow_agreement` counts that agreement
for one version, next to the champion's on the same films.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from shared.errors import ObjectNotFoundError
from shared.jobs.keys import SHADOW_PREFIX, shadow_key
from shared.jobs.store import JobStore
from shared.schemas import ClassProbabilities, ModelRef, Probability, UTCDateTime
from shared.storage import Storage

Label = Literal["NORMAL", "PNEUMONIA"]


class ShadowAnswer(BaseModel):
    """One version's answer for the film, at the job's site operating point."""

    model_config = ConfigDict(protected_namespaces=())

    model: ModelRef
    label: Label
    subtype: Literal["bacterial", "viral"] | None = None
    pneumonia_probability: Probability
    threshold: Probability


class ShadowOutput(BaseModel):
    """`shadow/{job_id}.json`: the shadow version's answer and the champion's that was sent."""

    job_id: str
    site: str
    shadow: ShadowAnswer
    class_probabilities: ClassProbabilities
    champion: ShadowAnswer
    scored_at: UTCDateTime
    inference_ms: float


def read_shadow(storage: Storage, job_id: str) -> ShadowOutput | None:
    """The job's shadow output, None when there is none."""
    try:
        return ShadowOutput.model_validate_json(storage.get(shadow_key(job_id)))
    except ObjectNotFoundError:
        return None


def shadow_job_ids(storage: Storage) -> list[str]:
    """Every job with a shadow output (one listing of `shadow/`)."""
    return sorted(key[len(SHADOW_PREFIX):].removesuffix(".json")
                  for key in storage.list(SHADOW_PREFIX) if key.endswith(".json"))


@dataclass
class LabelCounts:
    """Agreement of one model's labels with the readers' on the same films."""

    agree: int = 0
    pneumonia: int = 0  # films the readers called PNEUMONIA
    normal: int = 0
    true_positive: int = 0
    true_negative: int = 0

    def add(self, model_label: str, reader_label: str) -> None:
        self.agree += model_label == reader_label
        if reader_label == "PNEUMONIA":
            self.pneumonia += 1
            self.true_positive += model_label == "PNEUMONIA"
        else:
            self.normal += 1
            self.true_negative += model_label == "NORMAL"

    def summary(self) -> dict[str, float | int | None]:
        n = self.pneumonia + self.normal
        return {**asdict(self), "agreement": self.agree / n if n else None,
                "sensitivity": self.true_positive / self.pneumonia if self.pneumonia else None,
                "specificity": self.true_negative / self.normal if self.normal else None}


@dataclass
class ShadowAgreement:
    """One shadow version against the readers, and the champion on the same reviewed films."""

    version: int
    scored: int = 0
    reviewed: int = 0  # scored films a reader gave a verdict on
    agrees_with_champion: int = 0
    shadow: LabelCounts = field(default_factory=LabelCounts)
    champion: LabelCounts = field(default_factory=LabelCounts)
    by_site: dict[str, LabelCounts] = field(default_factory=dict)

    def add(self, output: ShadowOutput, reader_label: str | None) -> None:
        self.scored += 1
        self.agrees_with_champion += output.shadow.label == output.champion.label
        if reader_label is None:
            return
        self.reviewed += 1
        self.shadow.add(output.shadow.label, reader_label)
        self.champion.add(output.champion.label, reader_label)
        self.by_site.setdefault(output.site, LabelCounts()).add(output.shadow.label,
                                                                 reader_label)

    def summary(self) -> dict:
        return {"version": self.version, "scored": self.scored, "reviewed": self.reviewed,
                "agrees_with_champion": self.agrees_with_champion,
                "shadow_vs_readers": self.shadow.summary(),
                "champion_vs_readers": self.champion.summary(),
                "shadow_vs_readers_by_site": {site: counts.summary()
                                              for site, counts in sorted(self.by_site.items())}}


def shadow_agreement(storage: Storage, jobs: JobStore, version: int,
                     job_ids: Iterable[str] | None = None) -> ShadowAgreement:
    """Count version `version`'s shadow outputs against the readers' current verdicts."""
    report = ShadowAgreement(version)
    for job_id in job_ids if job_ids is not None else shadow_job_ids(storage):
        output = read_shadow(storage, job_id)
        if output is None or output.shadow.model.version != version:
            continue
        record = jobs.get(job_id)
        if record is None:  # erased since (its shadow output goes with it)
            continue
        report.add(output, record.feedback.label if record.feedback else None)
    return report
