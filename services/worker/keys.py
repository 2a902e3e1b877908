"""Storage and Redis keys the worker writes (layout in docs/architecture.md, "Storage")."""


def result_key(job_id: str) -> str:
    return f"results/{job_id}.json"


def heatmap_key(job_id: str) -> str:
    """The overlay PNG, drawn on first read from the upload and the attention map."""
    return f"heatmaps/{job_id}.png"


def attention_key(job_id: str) -> str:
    """The Grad-CAM map as uint8 `.npy` at the model's resolution (shared.heatmap)."""
    return f"heatmaps/{job_id}.attention.npy"


def job_lock_key(job_id: str) -> str:
    return f"cxr:job-lock:{job_id}"
