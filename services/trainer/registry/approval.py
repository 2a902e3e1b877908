"""A person signs off a retrained version before it serves: `approve` or `reject`.

The retraining pipeline registers each new version as `challenger` with its gate verdict
(`gate.*` tags), every site's verdict and report run (`gate.site.*`, `site.<site>.run_id`) and
`approval.state`: `pending` when every gate passed, `gates_failed` when one did not. Unless
`CXR_RETRAIN_AUTO_PROMOTE` is on, nothing else happens until someone runs

    python -m services.trainer approve --version N --by NAME --reason TEXT

which refuses a version whose gates failed, else makes it `champion`, publishes it with its site
operating points, and records `approved_by`, `approved_at` and `approval_reason` on the version.
`reject` records the opposite decision and takes the `challenger` alias off the version.

Every move of the champion (approval, automatic or forced promotion, rollback) and every
rejection or refused approval is one line of the audit trail (`shared.audit`, `CXR_AUDIT_LOG`):
client = who decided, action `model_<what>`, the model name and versions, the reason.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException

from services.trainer.registry.promotion import audit_model_event, publish_registered, registry_for
from services.trainer.registry.registry import ModelRegistry, RegistryError
from shared.contract import CHALLENGER_ALIAS

log = logging.getLogger(__name__)

APPROVAL_STATE_TAG = "approval.state"
# Values of APPROVAL_STATE_TAG.
PENDING = "pending"  # every gate passed; waits for a person
GATES_FAILED = "gates_failed"  # cannot be approved
APPROVED = "approved"
REJECTED = "rejected"
AUTO_PROMOTED = "auto_promoted"  # CXR_RETRAIN_AUTO_PROMOTE promoted it without a person
PIPELINE_ACTOR = "retrain pipeline"


class ApprovalRefusedError(RegistryError):
    """An approval that may not be given (failed gates, already rejected, already champion)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _required(value: str | None, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise RegistryError(f"{what} must not be empty")
    return text


def approval_refusal(version: int, tags: dict[str, str], champion: int | None) -> str | None:
    """Why `version` may not be approved (None when it may)."""
    if tags.get("gate.passed") != "true":
        return (f"version {version} cannot be approved: its gates did not pass "
                f"({tags.get('gate.reason', 'never gated')})")
    if tags.get(APPROVAL_STATE_TAG) == REJECTED:
        return (f"version {version} was rejected by {tags.get('rejected_by', 'someone')} "
                f"({tags.get('rejection_reason', '')}); a rejected version is not approved later")
    if champion == version:
        return f"version {version} is already the champion"
    return None


def approve(settings, version: int, *, by: str, reason: str) -> dict:
    """Make `version` the champion and publish it, recording who approved it and why."""
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    registry = registry_for(settings)
    tags = registry.version(version).tags
    champion = registry.champion()
    refusal = approval_refusal(version, tags, champion)
    if refusal is not None:
        audit_model_event(settings, "model_approve", by, status=409, version=version,
                          champion=champion, reason=reason, refused=refusal)
        raise ApprovalRefusedError(refusal)
    registry.promote(version, reason=f"approved: {reason}", by=by)
    published = publish_registered(registry, settings, version)
    approved_at = _now()
    registry.tag_version(version, {APPROVAL_STATE_TAG: APPROVED, "approved_by": by,
                                   "approved_at": approved_at, "approval_reason": reason})
    _drop_challenger(registry, version)
    audit_model_event(settings, "model_approve", by, version=version, previous_champion=champion,
                      reason=reason, published_to=published.model_base_path)
    log.info("%s version %d approved by %s and published", registry.name, version, by)
    return {"version": version, "previous_champion": champion, "approved_by": by,
            "approved_at": approved_at, "reason": reason,
            "versions_served": published.versions_served,
            "model_base_path": published.model_base_path}


def reject(settings, version: int, *, by: str, reason: str) -> dict:
    """Record that `version` is not to serve; it loses the `challenger` alias."""
    by, reason = _required(by, "--by"), _required(reason, "--reason")
    registry = registry_for(settings)
    registry.version(version)
    champion = registry.champion()
    if champion == version:
        raise ApprovalRefusedError(
            f"version {version} is the champion: roll back instead of rejecting it")
    rejected_at = _now()
    registry.tag_version(version, {APPROVAL_STATE_TAG: REJECTED, "rejected_by": by,
                                   "rejected_at": rejected_at, "rejection_reason": reason})
    _drop_challenger(registry, version)
    audit_model_event(settings, "model_reject", by, version=version, champion=champion,
                      reason=reason)
    return {"version": version, "rejected_by": by, "rejected_at": rejected_at, "reason": reason,
            "champion": champion}


def _drop_challenger(registry: ModelRegistry, version: int) -> None:
    """Take `challenger` off `version` (a decided version no longer waits for one)."""
    if registry.alias_version(CHALLENGER_ALIAS) != version:
        return
    try:
        registry.client.delete_registered_model_alias(registry.name, CHALLENGER_ALIAS)
    except MlflowException:
        log.warning("could not remove alias %s from version %d", CHALLENGER_ALIAS, version)
