"""Queue and task names services/trainer imports from here; their home is `shared.jobs.queue`."""

from shared.jobs.queue import (
    DRIFT_CHECK_TASK,
    INFERENCE_QUEUE,
    PURGE_TASK,
    RETRAIN_TASK,
    TRAINING_QUEUE,
)

__all__ = ["DRIFT_CHECK_TASK", "INFERENCE_QUEUE", "PURGE_TASK", "RETRAIN_TASK", "TRAINING_QUEUE"]
