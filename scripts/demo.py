"""`make demo`: start the service (as `make up` does), send the repo's sample X-rays through the
HTTPS API, print a table of results, and leave everything running for the web page."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402 - the sibling script

SAMPLE_DIR = stack.ROOT / "data" / "sample"


def _truth(path: Path) -> str:
    return path.parent.name


def main() -> None:
    stack.up()
    key = os.environ.get("CXR_DEMO_API_KEY") or (stack.VAR / "demo-api-key").read_text().strip()
    base = f"https://localhost:{stack.GATEWAY_PORT}"
    images = sorted(p for p in SAMPLE_DIR.glob("*/*") if p.is_file() and p.suffix.lower() != ".md")
    print(f"\nSending {len(images)} sample X-rays from data/sample/ to {base}/v1/predictions ...\n")
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    with httpx.Client(base_url=base, headers=headers, verify=False, timeout=60) as client:
        jobs = []
        for path in images:
            response = client.post(
                "/v1/predictions", files={"file": (path.name, path.read_bytes())}
            )
            response.raise_for_status()
            jobs.append((path, response.json()["job_id"]))
        rows, correct = [], 0
        for path, job_id in jobs:
            job = client.get(f"/v1/predictions/{job_id}", params={"wait": 30}).json()
            result = job.get("result") or {}
            label = result.get("label", job["status"])
            correct += label == _truth(path)
            model = result.get("model") or {}
            rows.append(
                (
                    path.name,
                    _truth(path),
                    label,
                    result.get("pneumonia_probability"),
                    result.get("subtype") or "",
                    f"{model.get('name', '')} v{model.get('version', '')}",
                )
            )
    elapsed = time.monotonic() - started
    print(f"{'file':40s} {'truth':9s} {'label':9s} {'p(pneu)':>7s}  {'subtype':9s} model")
    for name, truth, label, prob, subtype, model in rows:
        prob_text = f"{prob:7.3f}" if isinstance(prob, float) else "      -"
        print(f"{name:40s} {truth:9s} {label:9s} {prob_text}  {subtype:9s} {model}")
    print(
        f"\n{correct}/{len(rows)} labels agree with the file's folder; "
        f"{elapsed:.1f}s for all of them."
    )
    print("(The samples come from the training data set: this shows the service works; the model's")
    print(" accuracy on images it never saw is in models/MODEL_CARD.md.)")
    print(f"The service is still running: open {base}/ (API key above), `make down` to stop it.")


if __name__ == "__main__":
    main()
