"""What reader feedback costs: requests per second `POST /v1/predictions/{job_id}/feedback`
takes, and whether predictions slow down while it arrives.

Starts the serving stack as `bench.e2e` does (scripts/stack.py: Redis, the model server with the
bundled model, the inference worker, the reconciler and the HTTPS gateway, local storage) in a
scratch folder on free ports, makes `--jobs` finished predictions to give feedback on, then runs
five bounded loops:

1. predictions alone: `--predict-clients` clients upload and wait (`POST /v1/predictions?wait=`)
   until `--predictions` answers are in;
2. feedback alone: `--feedback-clients` clients send verdicts back to back on the finished jobs
   (each a replacement after the first round: the film copy is skipped, the label and the job
   record are written) until `--feedbacks` answers are in;
3. both at once: loop 1 again while the feedback clients keep sending until it ends;
4. loop 1 again beside one client sending `--paced-rate` verdicts a second (a realistic, still
   generous, rate);
5. loop 1 alone again: predictions alone are compared with the mean of runs 1 and 5, which
   brackets a machine whose load drifts.

Prints a Markdown table (requests/s, p50/p95 latency) and the change in prediction latency and
throughput with feedback arriving; writes JSON (`--json`):

    python -m bench.feedback --predictions 300 --json out/bench/feedback.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.e2e import (
    HttpTarget,
    Image,
    bench_images,
    closed_loop,
    running_stack,
    send_to_pipeline,
    summarise,
)
from bench.serving_latency import ROOT

OTHER = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}


async def _predictions(target: HttpTarget, images: list[Image], clients: int,
                       requests: int, done: asyncio.Event | None = None) -> dict:
    """Uploads until `requests` answers are in (the stack is warm already); sets `done` when it
    ends."""
    row, _ = await closed_loop(target, images, clients, requests, warm_up=False, done=done)
    return row


async def _feedbacks(target: HttpTarget, jobs: list[dict], clients: int, limit: int,
                     stop: asyncio.Event | None = None, rate: float | None = None) -> dict:
    """Verdicts on `jobs` (alternating confirm and correct) until `limit` answers are in or
    `stop` is set: back to back (closed loop), or with `rate` one every 1/rate seconds."""
    latencies: list[float] = []
    issued = 0
    began = time.perf_counter()

    async def one_client() -> None:
        nonlocal issued
        async with target.client() as http:
            while issued < limit and not (stop is not None and stop.is_set()):
                if rate is not None:  # paced: wait for this request's slot
                    await asyncio.sleep(max(0.0, began + issued / rate - time.perf_counter()))
                    if stop is not None and stop.is_set():
                        break
                job = jobs[issued % len(jobs)]
                model_label = job["result"]["label"]
                label = model_label if (issued // len(jobs)) % 2 == 0 else OTHER[model_label]
                issued += 1
                body = {"label": label, "subtype": None, "reader": "bench reader",
                        "comment": "bench"}
                start = time.perf_counter()
                response = await http.post(job["links"]["feedback"], json=body)
                if response.status_code != 201:
                    raise RuntimeError(f"feedback refused: {response.status_code} "
                                       f"{response.text}")
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    row = summarise(latencies, time.perf_counter() - start, clients)
    row["requests_per_s"] = row.pop("images_per_s")
    return row


async def _both(target: HttpTarget, images: list[Image], jobs: list[dict],
                args: argparse.Namespace, rate: float | None = None) -> tuple[dict, dict]:
    done = asyncio.Event()
    predictions, feedbacks = await asyncio.gather(
        _predictions(target, images, args.predict_clients, args.predictions, done),
        _feedbacks(target, jobs, 1 if rate else args.feedback_clients, sys.maxsize, done, rate))
    return predictions, feedbacks


def measure(args: argparse.Namespace) -> dict:
    images, source = bench_images(args.images)
    result: dict = {"images": len(images), "image_source": source, "cpu_count": os.cpu_count(),
                    "jobs": args.jobs, "predict_clients": args.predict_clients,
                    "feedback_clients": args.feedback_clients}
    print(f"{len(images)} X-rays from {source}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="cxr-bench-feedback-"))
    try:
        with running_stack(folder, all_services=False) as stack:
            target = HttpTarget(stack.gateway_url, stack.tls,
                                {"Authorization": f"Bearer {stack.api_key}"}, send_to_pipeline)

            async def finished_jobs() -> list[dict]:
                async with target.client() as http:
                    return [await send_to_pipeline(http, images[i % len(images)])
                            for i in range(args.jobs)]

            jobs = asyncio.run(finished_jobs())  # also warms the worker and the model up
            result["predictions_alone"] = asyncio.run(
                _predictions(target, images, args.predict_clients, args.predictions))
            print(f"  predictions alone: {_line(result['predictions_alone'])}", flush=True)
            result["feedback_alone"] = asyncio.run(
                _feedbacks(target, jobs, args.feedback_clients, args.feedbacks))
            print(f"  feedback alone:    {_line(result['feedback_alone'])}", flush=True)
            both = asyncio.run(_both(target, images, jobs, args))
            result["predictions_with_feedback"], result["feedback_with_predictions"] = both
            print(f"  predictions + fb:  {_line(both[0])}", flush=True)
            print(f"  feedback + preds:  {_line(both[1])}", flush=True)
            paced = asyncio.run(_both(target, images, jobs, args, args.paced_rate))
            result["predictions_with_paced_feedback"], result["paced_feedback"] = paced
            print(f"  predictions + {args.paced_rate:g}/s: {_line(paced[0])}", flush=True)
            result["predictions_alone_again"] = asyncio.run(
                _predictions(target, images, args.predict_clients, args.predictions))
            print(f"  predictions again: {_line(result['predictions_alone_again'])}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Against the mean of the two runs alone (before and after), which brackets machine drift.
    alone = {key: (result["predictions_alone"][key] + result["predictions_alone_again"][key]) / 2
             for key in ("p50_ms", "p95_ms", "images_per_s")}
    result["prediction_slowdown"] = {
        name: {"p50_ratio": result[name]["p50_ms"] / alone["p50_ms"],
               "p95_ratio": result[name]["p95_ms"] / alone["p95_ms"],
               "throughput_ratio": result[name]["images_per_s"] / alone["images_per_s"]}
        for name in ("predictions_with_feedback", "predictions_with_paced_feedback")}
    return result


def _rate(row: dict) -> float:
    return row.get("requests_per_s", row.get("images_per_s"))


def _line(row: dict) -> str:
    rate = _rate(row)
    return (f"{row['requests']} requests, {rate:.1f}/s, p50 {row['p50_ms']:.1f} ms, "
            f"p95 {row['p95_ms']:.1f} ms")


def report(result: dict) -> str:
    lines = [f"{result['cpu_count']} CPUs; {result['predict_clients']} prediction clients, "
             f"{result['feedback_clients']} feedback clients, {result['jobs']} finished jobs",
             "", "| loop | requests | per second | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for name in ("predictions_alone", "feedback_alone", "predictions_with_feedback",
                 "feedback_with_predictions", "predictions_with_paced_feedback",
                 "paced_feedback", "predictions_alone_again"):
        row = result[name]
        rate = _rate(row)
        lines.append(f"| {name.replace('_', ' ')} | {row['requests']} | {rate:.1f} | "
                     f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} |")
    for name, slow in result["prediction_slowdown"].items():
        lines.append(f"\n{name.replace('_', ' ')} against predictions alone (mean of both "
                     f"runs): p50 x{slow['p50_ratio']:.2f}, p95 x{slow['p95_ratio']:.2f}, "
                     f"throughput x{slow['throughput_ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20,
                        help="finished predictions to give feedback on (default 20)")
    parser.add_argument("--predictions", type=int, default=60,
                        help="measured predictions per prediction loop (default 60)")
    parser.add_argument("--feedbacks", type=int, default=1000,
                        help="most verdicts per feedback loop (default 1000)")
    parser.add_argument("--predict-clients", type=int, default=2,
                        help="concurrent prediction clients (default 2)")
    parser.add_argument("--feedback-clients", type=int, default=4,
                        help="concurrent feedback clients (default 4)")
    parser.add_argument("--paced-rate", type=float, default=5.0,
                        help="verdicts per second in the paced run beside predictions (default "
                             "5: far more than readers give)")
    parser.add_argument("--images", type=int, default=20,
                        help="distinct X-rays, half of each class (default 20)")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "feedback.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = measure(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
