"""The pipeline, the thinnest service of the same shape, and the model server, in one run.

The service's shape is fixed: an HTTPS FastAPI gateway queues a Celery task on Redis, a Celery
worker decodes the image and calls the model server over gRPC. `bench.floor_app` is that shape
with everything else taken out (no authentication, validation, job record, storage, lock or
retry): what it costs is the least any service of this shape can cost on this machine. This bench
starts the service as `bench.e2e` does (scripts/stack.py on free ports), then beside it the floor's
worker and gateway on the same Redis (another database), the same model server and the same TLS
certificate, and measures on the same real X-rays:

- the pipeline (`POST /v1/predictions?wait=30`), then the floor (`POST /predict`) in three variants
  (`FLOOR_VARIANTS`: the prefork pool the project uses, a threads pool, a threads pool sending
  waiting tasks' images as one Predict), each for 1 and 4 clients after an uncounted warm-up
  round; then the model server called directly over gRPC with the worker's call (Predict with
  Grad-CAM) by 1 and 4 callers;
- for 4 clients each, the CPU milliseconds one image costs in each process tree and the bench's
  own client (from /proc), and the cores' share they kept busy.

The ratios against direct gRPC tell how much of the 60 % target is left to the project's own work
once the shape has taken its share. About 3.5 minutes on 2 idle cores:

    python -m bench.shape_floor --json out/bench/shape_floor.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.e2e import (
    TARGET_THROUGHPUT_SHARE,
    HttpTarget,
    Image,
    _grpc_level,
    bench_images,
    cpu_counted,
    http_levels,
    model_inputs,
    running_stack,
    send_to_pipeline,
)
from bench.serving_latency import ROOT, free_port

PIPELINE_PROCESSES = ("gateway", "worker", "model-server", "redis", "reconciler")
# The project's pool; one process with threads; the same sending concurrent tasks' images as one
# Predict (up to 8, waiting at most 2 ms for more).
FLOOR_VARIANTS = {"prefork": ("prefork", 1), "threads": ("threads", 1),
                  "threads_batched": ("threads", 8)}


async def send_to_floor(http: httpx.AsyncClient, image: Image) -> dict:
    name, data = image
    answer = await http.post("/predict", files={"file": (name, data, "image/jpeg")})
    answer.raise_for_status()
    return answer.json()


@contextmanager
def floor_service(redis_url: str, grpc_target: str, cert: Path, key: Path, folder: Path,
                  variant: str) -> Iterator[tuple[str, dict[str, int]]]:
    """The floor's Celery worker (a `FLOOR_VARIANTS` pool, two per core either way) and HTTPS
    gateway; yields its URL and the two process ids."""
    pool, batch_max = FLOOR_VARIANTS[variant]
    env = {**os.environ, "FLOOR_REDIS_URL": redis_url, "FLOOR_GRPC": grpc_target,
           "FLOOR_BATCH_MAX": str(batch_max), "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    port = free_port()
    celery = str(Path(sys.executable).with_name("celery"))
    argvs = {
        "floor worker": [celery, "-A", "bench.floor_app", "worker", "-Q", "floor", "-n",
                         "floor@%h", "--pool", pool, "--loglevel", "WARNING"],
        "floor gateway": [sys.executable, "-m", "bench.floor_app", "--port", str(port),
                          "--certfile", str(cert), "--keyfile", str(key)],
    }
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, argv in argvs.items():
            with (folder / f"{name.replace(' ', '-')}-{variant}.log").open("wb") as log:
                procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               env=env, cwd=ROOT, start_new_session=True)
        yield f"https://127.0.0.1:{port}", {name: proc.pid for name, proc in procs.items()}
    finally:  # each in its own process group: the worker's pool processes go with it
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_answering(target: HttpTarget, image: Image, folder: Path, timeout: float = 180) -> None:
    """Until the floor answers one image (its worker imports TensorFlow first)."""
    async def once() -> None:
        async with target.client() as http:
            await target.send(http, image)

    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(once())
            return
        except Exception as exc:
            # Not up yet: try again; an HTTP error or the deadline is final.
            if isinstance(exc, httpx.HTTPStatusError) or time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-3000:] for p in folder.glob("floor-*.log"))
                raise SystemExit(f"the floor did not answer ({exc!r}):\n{logs}") from exc
            time.sleep(1)


def batch_sizes(redis_url: str) -> dict[str, int]:
    """How many Predicts of each size the batching floor's worker sent (all levels, warm-up
    included; it writes them as it stops), then forgotten."""
    import redis

    from bench.floor_app import BATCH_SIZES_KEY

    client = redis.Redis.from_url(redis_url)
    try:
        sizes = {k.decode(): int(v) for k, v in client.hgetall(BATCH_SIZES_KEY).items()}
        client.delete(BATCH_SIZES_KEY)
    finally:
        client.close()
    return dict(sorted(sizes.items(), key=lambda item: int(item[0])))


def counted_levels(target: HttpTarget, images: list[Image], pids: dict[str, int], requests: int,
                   label: str) -> dict[str, dict]:
    """1 and 4 clients after an uncounted 4-client round (every pool process and connection
    warm), each with the CPU of the named process trees and the client."""
    http_levels(target, images, [(4, 40)], f"{label} (warm-up)")
    return {str(c): counted_level(target, images, pids, c, requests, label) for c in (1, 4)}


def counted_level(target: HttpTarget, images: list[Image], pids: dict[str, int], clients: int,
                  requests: int, label: str) -> dict:
    out: dict = {}
    with cpu_counted(pids, requests + clients, out):
        rows, _ = http_levels(target, images, [(clients, requests)], label)
    return {**rows[str(clients)], **out}


def measure(args: argparse.Namespace) -> dict:
    images, source = bench_images(args.images)
    batches = model_inputs(images)
    result: dict = {"images": len(images), "image_source": source, "cpu_count": os.cpu_count(),
                    "requests": args.requests}
    print(f"{len(images)} X-rays from {source}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="cxr-bench-floor-"))
    try:
        with running_stack(folder, all_services=False) as stack:
            cert, key = stack.cert_files
            stack_pids = {name: stack.pid(name) for name in PIPELINE_PROCESSES}
            pipeline = HttpTarget(stack.gateway_url, stack.tls,
                                  {"Authorization": f"Bearer {stack.api_key}"}, send_to_pipeline)
            result["pipeline"] = counted_levels(pipeline, images, stack_pids, args.requests,
                                                "pipeline")

            redis_url = stack.env["CXR_REDIS_URL"].rsplit("/", 1)[0] + "/1"
            for variant in FLOOR_VARIANTS:
                with floor_service(redis_url, stack.grpc_target, cert, key, folder,
                                   variant) as (url, pids):
                    floor = HttpTarget(url, stack.tls, {}, send_to_floor)
                    wait_answering(floor, images[0], folder)
                    floor_pids = {**pids, "model-server": stack.pid("model-server"),
                                  "redis": stack.pid("redis")}
                    result[f"floor_{variant}"] = counted_levels(floor, images, floor_pids,
                                                                args.requests, f"floor, {variant}")
                if FLOOR_VARIANTS[variant][1] > 1:  # written by the worker as it stopped
                    result.setdefault("predict_batch_sizes", {})[variant] = batch_sizes(redis_url)

            result["grpc_predict_gradcam"] = {}
            _grpc_level(stack.grpc_target, batches, 4, 40, "predict_with_heatmap")  # warm-up
            for callers in (1, 4):
                out: dict = {}
                with cpu_counted({"model-server": stack.pid("model-server")},
                                 args.requests + callers, out):
                    row = _grpc_level(stack.grpc_target, batches, callers, args.requests,
                                      "predict_with_heatmap")
                print(f"  {'gRPC Predict + Grad-CAM':22s} {callers:2d} caller(s): p50 "
                      f"{row['p50_ms']:7.1f} ms, {row['images_per_s']:6.1f} images/s", flush=True)
                result["grpc_predict_gradcam"][str(callers)] = {**row, **out}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    direct = result["grpc_predict_gradcam"]["4"]["images_per_s"]
    result["ratio_4_clients"] = {name: result[name]["4"]["images_per_s"] / direct
                                 for name in SYSTEMS if name != "grpc_predict_gradcam"}
    return result


SYSTEMS = {
    "pipeline": "pipeline (HTTPS, queue, worker, gRPC)",
    "floor_prefork": "floor: the same shape, nothing else (prefork pool)",
    "floor_threads": "floor, threads pool",
    "floor_threads_batched": "floor, threads pool, concurrent tasks in one Predict",
    "grpc_predict_gradcam": "model server, gRPC Predict + Grad-CAM",
}


def report(result: dict) -> str:
    lines = [f"{result['images']} X-rays from {result['image_source']}, {result['cpu_count']} "
             f"cores, {result['requests']} requests a level", "",
             "| system | clients | p50 ms | p99 ms | images/s | CPU ms/image | cores busy |",
             "|---|---|---|---|---|---|---|"]
    for name, label in SYSTEMS.items():
        for clients, row in result[name].items():
            lines.append(f"| {label} | {clients} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                         f"{row['images_per_s']:.1f} | {row['cpu_ms_per_image_total']:.1f} | "
                         f"{row['cores_busy']:.2f} |")
    lines.append("")
    for name in result["ratio_4_clients"]:
        cpu = result[name]["4"]["cpu_ms_per_image"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        lines.append(f"- {name}, 4 clients: {result['ratio_4_clients'][name]:.2f} of direct gRPC "
                     f"(target {TARGET_THROUGHPUT_SHARE:.2f}); CPU ms per image: {parts}")
    for variant, sizes in result.get("predict_batch_sizes", {}).items():
        lines.append(f"- floor_{variant}: Predicts by batch size, all levels and warm-up: {sizes}")
    cpu = result["grpc_predict_gradcam"]["4"]["cpu_ms_per_image"]
    lines.append("- direct gRPC, 4 callers: CPU ms per image: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="real X-rays to cycle through")
    parser.add_argument("--requests", type=int, default=400, help="requests at each level")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    result = measure(args)
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
