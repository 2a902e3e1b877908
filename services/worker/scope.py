"""The scope of one job's film: pixel checks and header hints from decoding, hints recorded at
intake (before de-identification), and the served model's screening outputs when it has them.

A refusing reason ends the job `failed` with `not_a_chest_radiograph`; otherwise the result
carries `scope` (shared.schemas.Scope). Both are counted per reason and per outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.worker import metrics
from services.worker.errors import ModelServerError
from shared.imaging import DecodedImage
from shared.jobs.records import JobRecord
from shared.schemas import Scope, ScopeReason
from shared.scope import SCOPE_HINTS_KEY, check_refusal, model_reasons, ordered, refusing

REFUSED, FLAGGED, IN_SCOPE = "refused", "flagged", "in_scope"


def intake_reasons(record: JobRecord, decoded: DecodedImage) -> tuple[str, ...]:
    """What decoding found and what the intake recorded; refuses at once when any reason does."""
    hints = record.extra.get(SCOPE_HINTS_KEY) or []
    found = ordered([*decoded.scope_reasons, *hints])
    check_refusal(found)
    return found


def with_model_reasons(found: Iterable[str], outputs: Mapping[str, Any]) -> Scope:
    """The film's scope once the model answered; refuses when the model's reasons do."""
    try:
        from_model = model_reasons(outputs)
    except ValueError as exc:
        raise ModelServerError(f"The model's screening outputs are malformed: {exc}") from exc
    reasons = ordered([*found, *from_model])
    check_refusal(reasons)
    return Scope(in_validated_population=not reasons,
                 reasons=[ScopeReason(reason) for reason in reasons])


def count(reasons: Iterable[str]) -> None:
    """One finished job's scope in the metrics: its outcome, and each reason under it."""
    found = ordered(reasons)
    outcome = REFUSED if refusing(found) else FLAGGED if found else IN_SCOPE
    metrics.SCOPE_OUTCOMES.labels(outcome).inc()
    for reason in found:
        metrics.SCOPE_REASONS.labels(reason, outcome).inc()
