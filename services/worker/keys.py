"""Storage and Redis keys the worker writes (layout in docs/architecture.md, "Storage")."""


def result_key(job_id: str) -> str:
    return f"results/{job_id}.json"


def heatmap_key(job_id: str) -> str:
    return f"heatmaps/{job_id}.png"


def job_lock_key(job_id: str) -> str:
    return f"cxr:job-lock:{job_id}"
