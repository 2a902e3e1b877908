"""End to end through the gateway, against what a user would write instead and the model server.

Starts the service the way `make up` does (scripts/stack.py: its own Redis, the model server with
the bundled model or `--model-dir`, the inference worker, the job reconciler, the HTTPS gateway;
`--all-services` adds MLflow with the model's registration, the trainer worker and beat) in a
scratch folder on free ports, then measures on the same real X-rays (from CXR_DATA_DIR: its test
split, then val, then train; data/sample when it is missing):

- the pipeline: HTTPS upload, queue, worker, one gRPC call for the prediction and its Grad-CAM,
  result and Grad-CAM map stored, the client waiting in the same request (`POST
  /v1/predictions?wait=30`); latency p50/p95/p99 for 1 client, images/s for 1, 4 and 16
  concurrent clients; for 1 client the two-request way (upload, then `GET ...?wait=30`); and for
  1 and 4 clients the answer followed by the heatmap PNG (`GET .../heatmap`, drawn over the
  X-ray on that first read), the work of a client that looks at every heatmap;
- the model server over gRPC with the worker's client: Predict alone, and Predict with Grad-CAM
  as the worker asks for them, one caller timed in turn (the model's own latency), then the
  throughput of both for 1/4/16 callers;
- the in-process app, `bench.inprocess_app`: one uvicorn + FastAPI process with the same TLS that
  decodes and calls the SavedModel in-process (prediction + Grad-CAM + heatmap PNG, the work of
  the pipeline with the heatmap fetched; Predict alone as well for 1 client), measured like the
  pipeline;
- the CPU one image costs: a 4-client pipeline run with the CPU time of each service's process
  tree (the worker's pool included) and of the bench's own client counted with psutil, against
  the same model work called directly over gRPC by 4 callers; with the cores' count this bounds
  the throughput any tuning of the pipeline's waits could reach.

Prints a Markdown table and the overheads; writes JSON (`--json`). `--profile DIR` adds a
4-client pipeline run under py-spy (gateway, worker and its pool, model server) and writes
their collapsed stacks and hottest functions. The default run:

    python -m bench.e2e --json out/bench/e2e.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import psutil

from bench.serving_latency import MODEL_NAME, ROOT, free_port, latest_bundled_model, time_in_turn

# Everything that serves predictions; MLflow, the trainer worker and beat only with --all-services.
SERVING_SERVICES = ("redis", "model-server", "worker", "reconciler", "gateway")
FINISHED = ("succeeded", "failed")
WAIT_S = 30
TARGET_THROUGHPUT_SHARE = 0.60  # pipeline images/s >= 60% of direct gRPC Predict, 4 clients
TARGET_LATENCY_MARGIN_MS = 25.0  # pipeline p50 (1 client) <= the model's latency + 25 ms

Image = tuple[str, bytes]


# ---------------------------------------------------------------- images


def bench_images(count: int) -> tuple[list[Image], str]:
    """`count` real X-rays, alternating classes, from CXR_DATA_DIR (its test split first, then
    val, then train) when it is there, else from data/sample."""
    from shared.settings import get_settings

    data_dir = Path(get_settings().data_dir)
    splits = [data_dir / split for split in ("test", "val", "train") if (data_dir / split).is_dir()]
    roots = splits or [Path("data") / "sample"]
    per_class = [[p for root in roots for p in sorted((root / label).glob("*"))
                  if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
                 for label in ("NORMAL", "PNEUMONIA")]
    chosen = [paths[i] for i in range(count) for paths in per_class if i < len(paths)][:count]
    if not chosen:
        raise SystemExit(f"no X-rays under {', '.join(map(str, roots))}")
    source = ", ".join(str(root) for root in roots)
    return [(p.name, p.read_bytes()) for p in chosen], source


def model_inputs(images: list[Image]) -> list[np.ndarray]:
    from shared.imaging import decode_xray, to_model_input

    return [to_model_input(decode_xray(data).pixels)[np.newaxis] for _, data in images]


# ---------------------------------------------------------------- statistics


def summarise(seconds: list[float], wall_s: float, clients: int) -> dict:
    values = np.array(seconds) * 1000
    return {
        "clients": clients,
        "requests": len(values),
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "wall_s": wall_s,
        "images_per_s": len(values) / wall_s,
    }


# ---------------------------------------------------------------- HTTP load


@dataclass
class HttpTarget:
    """How to send one image to a system and get its finished answer."""

    base_url: str
    tls: ssl.SSLContext
    headers: dict[str, str]
    send: Callable[[httpx.AsyncClient, Image], Awaitable[dict]]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, verify=self.tls, headers=self.headers,
                                 timeout=WAIT_S + 30)


async def send_to_pipeline(http: httpx.AsyncClient, image: Image) -> dict:
    """Upload and wait in the same request (`?wait=`); the finished view."""
    return await _upload_and_wait(http, image, {"wait": WAIT_S})


async def send_to_pipeline_two_requests(http: httpx.AsyncClient, image: Image) -> dict:
    """Upload, then wait on the job with `GET ...?wait=` until it has finished."""
    return await _upload_and_wait(http, image, {})


async def _upload_and_wait(http: httpx.AsyncClient, image: Image, params: dict) -> dict:
    name, data = image
    answer = await http.post("/v1/predictions", params=params,
                             files={"file": (name, data, "image/jpeg")})
    if answer.status_code == 200:
        return _succeeded(answer.json())
    if answer.status_code != 202:
        raise RuntimeError(f"upload refused: {answer.status_code} {answer.text}")
    return await _wait_for(http, answer.json()["job_id"])


def _succeeded(view: dict) -> dict:
    if view["status"] != "succeeded":
        raise RuntimeError(f"job {view['job_id']} failed: {view['failure']}")
    return view


async def send_to_pipeline_with_heatmap(http: httpx.AsyncClient, image: Image) -> dict:
    """Upload and wait, then fetch the heatmap PNG the answer links to (drawn on this read)."""
    view = await send_to_pipeline(http, image)
    heatmap = await http.get(view["heatmap_url"])
    if heatmap.status_code != 200 or heatmap.headers["content-type"] != "image/png":
        raise RuntimeError(f"heatmap of job {view['job_id']}: {heatmap.status_code}")
    return view


async def _wait_for(http: httpx.AsyncClient, job_id: str) -> dict:
    while True:
        view = (await http.get(f"/v1/predictions/{job_id}", params={"wait": WAIT_S})).json()
        if view["status"] in FINISHED:
            return _succeeded(view)


def send_to_inprocess(heatmap: bool) -> Callable[[httpx.AsyncClient, Image], Awaitable[dict]]:
    async def send(http: httpx.AsyncClient, image: Image) -> dict:
        name, data = image
        response = await http.post("/predict", params={"heatmap": str(heatmap).lower()},
                                   files={"file": (name, data, "image/jpeg")})
        response.raise_for_status()
        return response.json()

    return send


async def closed_loop(target: HttpTarget, images: list[Image], clients: int, requests: int,
                      warm_up: bool = True,
                      done: asyncio.Event | None = None) -> tuple[dict, list[dict]]:
    """`clients` clients, each with its own connection, sending back to back until `requests`
    answers are in; latency of each, images/s over all. With `warm_up`, each client first sends
    one unmeasured request; `done` is set when the loop ends."""
    latencies: list[float] = []
    answers: list[dict] = []
    issued = 0
    ready = asyncio.Barrier(clients + 1)

    async def one_client(index: int) -> None:
        nonlocal issued
        async with target.client() as http:
            if warm_up:
                await target.send(http, images[index % len(images)])  # connection + warm-up
            await ready.wait()
            while issued < requests:
                image = images[issued % len(images)]
                issued += 1
                start = time.perf_counter()
                answers.append(await target.send(http, image))
                latencies.append(time.perf_counter() - start)

    tasks = [asyncio.create_task(one_client(i)) for i in range(clients)]
    try:
        await ready.wait()
        start = time.perf_counter()
        await asyncio.gather(*tasks)
    finally:
        if done is not None:
            done.set()
    return summarise(latencies, time.perf_counter() - start, clients), answers


def http_levels(target: HttpTarget, images: list[Image], levels: list[tuple[int, int]],
                label: str) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """A row per concurrency level, and the answers each level got."""
    rows, answers = {}, {}
    for clients, requests in levels:
        row, answers[str(clients)] = asyncio.run(closed_loop(target, images, clients, requests))
        print(f"  {label:22s} {clients:2d} client(s): p50 {row['p50_ms']:7.1f} ms, "
              f"{row['images_per_s']:6.1f} images/s", flush=True)
        rows[str(clients)] = row
    return rows, answers


def worker_stage_medians(views: list[dict]) -> dict[str, float]:
    """Median of each stage the worker timed (`result.timings_ms`) over the pipeline's jobs."""
    stages: dict[str, list[float]] = {}
    for view in views:
        for stage, ms in (view.get("result") or {}).get("timings_ms", {}).items():
            stages.setdefault(stage, []).append(ms)
    return {stage: float(np.median(values)) for stage, values in stages.items()}


# ---------------------------------------------------------------- gRPC


def grpc_model_latency(target: str, batches: list[np.ndarray], calls: int) -> dict[str, dict]:
    """Predict alone, and the prediction with its Grad-CAM as the worker asks for them, one
    caller, timed in turn."""
    from services.worker.grpc_serving import ServingClient

    client = ServingClient(target, MODEL_NAME, timeout_s=30)
    predict_inputs, gradcam_inputs = itertools.cycle(batches), itertools.cycle(batches)
    try:
        seconds = time_in_turn({
            "predict": lambda: client.predict(next(predict_inputs)),
            "predict_gradcam": lambda: client.predict_with_heatmap(next(gradcam_inputs)),
        }, calls)
    finally:
        client.close()
    return {name: summarise(list(values), float(values.sum()), 1)
            for name, values in seconds.items()}


def grpc_predict_levels(target: str, batches: list[np.ndarray], levels: list[tuple[int, int]],
                        method: str = "predict") -> dict[str, dict]:
    """Throughput of `ServingClient.<method>` with N concurrent callers, each with its own
    channel (as N workers): `predict`, or `predict_with_heatmap` (the worker's call)."""
    rows = {}
    label = "gRPC Predict" if method == "predict" else "gRPC Predict + Grad-CAM"
    for callers, calls in levels:
        row = rows[str(callers)] = _grpc_level(target, batches, callers, calls, method)
        print(f"  {label:22s} {callers:2d} caller(s): p50 {row['p50_ms']:7.1f} ms, "
              f"{row['images_per_s']:6.1f} images/s", flush=True)
    return rows


def _grpc_level(target: str, batches: list[np.ndarray], callers: int, calls: int,
                method: str) -> dict:
    from services.worker.grpc_serving import ServingClient

    clients = [ServingClient(target, MODEL_NAME, timeout_s=30) for _ in range(callers)]
    lock, issued = threading.Lock(), [0]
    latencies: list[float] = []
    barrier = threading.Barrier(callers + 1)

    def caller(client: ServingClient) -> None:
        call = getattr(client, method)
        call(batches[0])  # channel, metadata, warm-up
        barrier.wait()
        while True:
            with lock:
                if issued[0] >= calls:
                    return
                index = issued[0]
                issued[0] += 1
            start = time.perf_counter()
            call(batches[index % len(batches)])
            seconds = time.perf_counter() - start
            with lock:
                latencies.append(seconds)

    try:
        with ThreadPoolExecutor(callers) as pool:
            futures = [pool.submit(caller, client) for client in clients]
            barrier.wait()
            start = time.perf_counter()
            for future in futures:
                future.result()
            wall = time.perf_counter() - start
    finally:
        for client in clients:
            client.close()
    return summarise(latencies, wall, callers)


# ---------------------------------------------------------------- the service


@dataclass
class Stack:
    module: ModuleType
    folder: Path
    api_key: str
    tls: ssl.SSLContext
    env: dict[str, str] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"https://127.0.0.1:{self.module.GATEWAY_PORT}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.module.GRPC_PORT}"

    def pid(self, service: str) -> int:
        return int((self.module.RUN_DIR / f"{service}.pid").read_text())

    @property
    def cert_files(self) -> tuple[Path, Path]:
        return self.folder / "tls" / "localhost.crt", self.folder / "tls" / "localhost.key"


def tls_trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@contextmanager
def running_stack(folder: Path, all_services: bool, worker_concurrency: int | None = None,
                  model_dir: Path | None = None) -> Iterator[Stack]:
    """scripts/stack.py's `up` in `folder` on free ports; `down` afterwards, whatever happens."""
    api_key = secrets.token_urlsafe(24)
    redis_port, grpc_port, rest_port, mlflow_port = (free_port() for _ in range(4))
    env = {
        "CXR_STACK_DIR": str(folder),
        "CXR_GATEWAY_PORT": str(free_port()),
        "CXR_MLFLOW_PORT": str(mlflow_port),
        "CXR_MODEL_SERVER_GRPC_PORT": str(grpc_port),
        "CXR_MODEL_SERVER_REST_PORT": str(rest_port),
        "CXR_REDIS_PORT": str(redis_port),
        # Set outright: stack.py lets the caller's environment override what it derives.
        "CXR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CXR_MODEL_SERVER_GRPC": f"127.0.0.1:{grpc_port}",
        "CXR_MODEL_SERVER_REST": f"http://127.0.0.1:{rest_port}",
        "CXR_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "CXR_STORAGE_BACKEND": "local",
        "CXR_STORAGE_ROOT": str(folder / "storage"),
        "CXR_MODEL_BASE_PATH": str(folder / "serving"),
        "CXR_TLS_DIR": str(folder / "tls"),
        "CXR_API_KEYS": f"bench:{api_key}",
        # A load test sends far more than a hospital client's default 120 requests a minute.
        "CXR_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    if worker_concurrency is not None:
        env["CXR_WORKER_CONCURRENCY"] = str(worker_concurrency)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        stack = importlib.reload(importlib.import_module("stack"))  # reads the ports just set
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    try:
        if not all_services:  # without MLflow, publish the bundled model as its registration would
            from services.trainer.registry.publish import publish_version
            from shared.storage import LocalStorage

            publish_version(model_dir or latest_bundled_model(), 1,
                            storage=LocalStorage(folder / "serving"),
                            model_name=MODEL_NAME)
        stack.up(only=None if all_services else SERVING_SERVICES)
        cert = folder / "tls" / "localhost.crt"
        yield Stack(stack, folder, api_key, tls_trusting(cert), env)
    finally:
        stack.down()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def inprocess_app(model_dir: Path, cert: Path, key: Path, log: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.inprocess_app", "--model-dir", str(model_dir),
            "--port", str(port), "--certfile", str(cert), "--keyfile", str(key)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the in-process app exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", verify=tls_trusting(cert), timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the in-process app did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# ---------------------------------------------------------------- profiling


@contextmanager
def py_spy(pids: dict[str, int], out_dir: Path) -> Iterator[None]:
    """py-spy recording each process (and its children) until the block ends."""
    py_spy_bin = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        # Collapsed stacks (flamegraph.pl and speedscope read them), by function, busy threads only.
        argv = [py_spy_bin, "record", "--pid", str(pid), "--subprocesses", "--rate", "200",
                "--function", "--nonblocking", "--format", "raw",
                "--output", str(out_dir / f"{name}.txt")]
        log = (out_dir / f"{name}-py-spy.log").open("wb")
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
    time.sleep(2)  # attached
    try:
        yield
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGINT)
        for proc, log in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def hottest(collapsed: Path, top: int = 12) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: the functions that burn the samples themselves (`self`),
    and the project's functions by samples with them anywhere on the stack (`project`)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            if "(services/" in frame or "(shared/" in frame:
                inclusive[frame] += int(count)
    if not samples:
        return {"self": [], "project": []}
    return {"self": [(f, n / samples) for f, n in own.most_common(top)],
            "project": [(f, n / samples) for f, n in inclusive.most_common(top)]}


def profile_pipeline(stack: Stack, target: HttpTarget, images: list[Image], requests: int,
                     out_dir: Path) -> dict[str, dict[str, list[tuple[str, float]]]]:
    pids = {name: stack.pid(name) for name in ("gateway", "worker", "model-server")}
    with py_spy(pids, out_dir):
        http_levels(target, images, [(4, requests)], "pipeline (profiled)")
    report = {}
    for name in pids:
        raw = out_dir / f"{name}.txt"
        report[name] = hottest(raw) if raw.exists() else {"self": [], "project": []}
        (out_dir / f"{name}-hottest.txt").write_text("\n".join(
            f"{kind:7s} {share:6.1%}  {frame}"
            for kind, frames in report[name].items() for frame, share in frames))
    return report


# ---------------------------------------------------------------- CPU per image

def tree_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process and all its descendants (the worker's pool too)."""
    totals = {}
    for name, root in pids.items():
        seconds = 0.0
        try:
            parent = psutil.Process(root)
            family = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for process in family:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:  # exited while listed
                continue
            seconds += times.user + times.system
        totals[name] = seconds
    return totals


@contextmanager
def cpu_counted(pids: dict[str, int], images: int, out: dict) -> Iterator[None]:
    """Fills `out` with CPU ms per image of each process tree and of this (client) process."""
    before, client_before, start = tree_cpu_seconds(pids), time.process_time(), time.perf_counter()
    yield
    wall = time.perf_counter() - start
    after, client = tree_cpu_seconds(pids), time.process_time() - client_before
    used = {name: after[name] - before[name] for name in pids}
    used["bench client"] = client
    out["cpu_ms_per_image"] = {name: 1000 * seconds / images for name, seconds in used.items()}
    out["cpu_ms_per_image_total"] = 1000 * sum(used.values()) / images
    out["cores_busy"] = sum(used.values()) / wall
    out["images"] = images


def cpu_per_image(stack: Stack, target: HttpTarget, images: list[Image], batches: list[np.ndarray],
                  clients: int, requests: int) -> dict[str, dict]:
    """Where the CPU of one image goes: the pipeline at `clients` clients, each service's process
    tree, against the same model work called directly over gRPC by as many callers."""
    # Imports TensorFlow now, so that its import is not counted as the client's CPU below.
    from services.worker.grpc_serving import ServingClient  # noqa: F401

    names = ("gateway", "worker", "model-server", "redis", "reconciler")
    pipeline: dict = {}
    with cpu_counted({name: stack.pid(name) for name in names}, requests + clients, pipeline):
        http_levels(target, images, [(clients, requests)], "pipeline (CPU counted)")
    direct: dict = {}
    with cpu_counted({"model-server": stack.pid("model-server")}, requests + clients, direct):
        _grpc_level(stack.grpc_target, batches, clients, requests, "predict_with_heatmap")
    return {"pipeline": pipeline, "grpc_predict_gradcam": direct}


# ---------------------------------------------------------------- the run


def measure(args: argparse.Namespace) -> dict:
    images, source = bench_images(args.images)
    batches = model_inputs(images)
    model_dir = (args.model_dir or latest_bundled_model()).resolve()
    levels = [(c, args.requests if c == 1 else max(args.per_client * c, args.requests))
              for c in args.clients]
    result: dict = {"images": len(images), "image_source": source, "cpu_count": os.cpu_count(),
                    "model_dir": str(model_dir), "levels": levels,
                    "worker_concurrency": args.worker_concurrency or 2 * (os.cpu_count() or 1)}
    print(f"{len(images)} X-rays from {source}; levels (clients, requests): {levels}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="cxr-bench-e2e-"))
    try:
        with running_stack(folder, args.all_services, args.worker_concurrency,
                           model_dir) as stack:
            cert, key = stack.cert_files
            pipeline = HttpTarget(stack.gateway_url, stack.tls,
                                  {"Authorization": f"Bearer {stack.api_key}"}, send_to_pipeline)
            result["pipeline"], views = http_levels(pipeline, images, levels, "pipeline")
            for clients, row in result["pipeline"].items():
                row["worker_stage_p50_ms"] = worker_stage_medians(views[clients])
            two_requests = HttpTarget(stack.gateway_url, stack.tls, pipeline.headers,
                                      send_to_pipeline_two_requests)
            result["pipeline_two_requests"], _ = http_levels(
                two_requests, images, [(1, args.requests)], "pipeline, 2 requests")
            with_heatmap = HttpTarget(stack.gateway_url, stack.tls, pipeline.headers,
                                      send_to_pipeline_with_heatmap)
            result["pipeline_with_heatmap"], _ = http_levels(
                with_heatmap, images, [level for level in levels if level[0] <= 4],
                "pipeline + heatmap")
            result["cpu_per_image"] = cpu_per_image(stack, pipeline, images, batches, 4,
                                                    max(args.per_client * 4, args.requests))
            result["model_latency"] = grpc_model_latency(stack.grpc_target, batches,
                                                         args.requests)
            result["grpc_predict"] = grpc_predict_levels(stack.grpc_target, batches, levels)
            result["grpc_predict_gradcam"] = grpc_predict_levels(
                stack.grpc_target, batches, levels, method="predict_with_heatmap")
            if args.profile:
                result["profile"] = profile_pipeline(stack, pipeline, images,
                                                     max(args.per_client * 4, args.requests),
                                                     args.profile)
        with inprocess_app(model_dir, cert, key, folder / "inprocess-app.log") as url:
            tls = tls_trusting(cert)
            same_work = HttpTarget(url, tls, {}, send_to_inprocess(heatmap=True))
            result["inprocess"], _ = http_levels(same_work, images, levels, "in-process app")
            predict_only = HttpTarget(url, tls, {}, send_to_inprocess(heatmap=False))
            rows, _ = http_levels(predict_only, images, [(1, args.requests)],
                                  "in-process, no heatmap")
            result["inprocess_predict_only"] = rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["comparison"] = compare(result)
    return result


def versus(rows: dict[str, dict], others: dict[str, dict]) -> dict[str, dict]:
    """Per concurrency level both have: extra p50, p50 ratio and throughput ratio of `rows`."""
    return {c: {"latency_p50_extra_ms": rows[c]["p50_ms"] - others[c]["p50_ms"],
                "latency_p50_ratio": rows[c]["p50_ms"] / others[c]["p50_ms"],
                "throughput_ratio": rows[c]["images_per_s"] / others[c]["images_per_s"]}
            for c in rows if c in others}


def compare(result: dict) -> dict:
    pipe = result["pipeline"]
    model = result["model_latency"]
    p50 = pipe["1"]["p50_ms"]
    out: dict = {
        # The in-process app draws the heatmap for every image: against it, the pipeline that
        # does too.
        "vs_inprocess": versus(result.get("pipeline_with_heatmap", {}), result["inprocess"]),
        "vs_grpc_predict": versus(pipe, result["grpc_predict"]),
        "vs_grpc_predict_gradcam": versus(pipe, result["grpc_predict_gradcam"]),
        "latency_p50_over_model_ms": {
            "predict": p50 - model["predict"]["p50_ms"],
            "predict_gradcam": p50 - model["predict_gradcam"]["p50_ms"],
        },
    }
    targets = {}
    if "4" in pipe:
        for name, key in (("grpc_predict", "vs_grpc_predict"),
                          ("grpc_predict_gradcam", "vs_grpc_predict_gradcam")):
            share = out[key]["4"]["throughput_ratio"]
            targets[f"throughput_4_clients_vs_{name}"] = {
                "value": share, "target": TARGET_THROUGHPUT_SHARE,
                "met": share >= TARGET_THROUGHPUT_SHARE}
    for name in ("predict_gradcam", "predict"):
        extra = out["latency_p50_over_model_ms"][name]
        targets[f"latency_p50_1_client_over_{name}_ms"] = {
            "value": extra, "target": TARGET_LATENCY_MARGIN_MS,
            "met": extra <= TARGET_LATENCY_MARGIN_MS}
    out["targets"] = targets
    return out


def report(result: dict) -> str:
    lines = ["| system | clients | requests | p50 ms | p95 ms | p99 ms | images/s |",
             "|---|---|---|---|---|---|---|"]

    def row(name: str, r: dict) -> None:
        lines.append(f"| {name} | {r['clients']} | {r['requests']} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['images_per_s']:.1f} |")

    for name, key in (("pipeline (HTTPS, queue, worker, gRPC)", "pipeline"),
                      ("pipeline, upload then GET ?wait", "pipeline_two_requests"),
                      ("pipeline, answer then heatmap PNG", "pipeline_with_heatmap"),
                      ("in-process app, same work", "inprocess"),
                      ("in-process app, Predict only", "inprocess_predict_only"),
                      ("model server, gRPC Predict", "grpc_predict"),
                      ("model server, gRPC Predict + Grad-CAM", "grpc_predict_gradcam")):
        for r in result[key].values():
            row(name, r)
    for name, r in result["model_latency"].items():
        row(f"model server, gRPC {name.replace('_', ' + ')} (one caller, in turn)", r)
    cmp_ = result["comparison"]
    lines.append("")
    lines.append("| pipeline vs | clients | extra p50 ms | p50 ratio | throughput ratio |")
    lines.append("|---|---|---|---|---|")
    for name, key in (("in-process app (pipeline with heatmap)", "vs_inprocess"),
                      ("gRPC Predict", "vs_grpc_predict"),
                      ("gRPC Predict + Grad-CAM", "vs_grpc_predict_gradcam")):
        for c, v in cmp_[key].items():
            lines.append(f"| {name} | {c} | {v['latency_p50_extra_ms']:.1f} | "
                         f"{v['latency_p50_ratio']:.2f} | {v['throughput_ratio']:.2f} |")
    lines.append("")
    for clients, r in result["pipeline"].items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["worker_stage_p50_ms"].items())
        lines.append(f"Worker stages with {clients} client(s), p50 ms: {stages}")
    for system, cpu in result.get("cpu_per_image", {}).items():
        parts = ", ".join(f"{name} {ms:.1f}" for name, ms in cpu["cpu_ms_per_image"].items())
        lines.append(f"CPU ms per image, {system} (4 clients): {parts}; total "
                     f"{cpu['cpu_ms_per_image_total']:.1f} ms, {cpu['cores_busy']:.2f} cores busy")
    for name, t in cmp_["targets"].items():
        lines.append(f"Target {name}: {t['value']:.2f} (target {t['target']}) "
                     f"{'met' if t['met'] else 'NOT met'}")
    for name, kinds in result.get("profile", {}).items():
        lines.append(f"\nBusiest in {name} (share of its busy samples; self, then project code "
                     "anywhere on the stack):")
        for kind, frames in kinds.items():
            lines.extend(f"  {kind:7s} {share:6.1%}  {frame}" for frame, share in frames[:8])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Default run (about 4 minutes on 2 idle cores): "
               "python -m bench.e2e --json out/bench/e2e.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60,
                        help="measured requests with 1 client (latency percentiles), and the "
                             "fewest per concurrency level (default 60)")
    parser.add_argument("--per-client", type=int, default=8,
                        help="measured requests per client at 4 and 16 clients (default 8)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16],
                        help="concurrency levels (default 1 4 16)")
    parser.add_argument("--images", type=int, default=40,
                        help="distinct X-rays, half of each class (default 40)")
    parser.add_argument("--all-services", action="store_true",
                        help="also start MLflow (registering the model), the trainer worker and "
                             "beat, as `make up` does (adds a minute or two)")
    parser.add_argument("--worker-concurrency", type=int, default=None, metavar="N",
                        help="the inference worker's pool processes (default: what `make up` "
                             "runs, two per CPU)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also profile a 4-client pipeline run with py-spy into DIR")
    parser.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                        help="an exported version to serve (default: the bundled model)")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "e2e.json")
    args = parser.parse_args(argv)
    if 1 not in args.clients:
        parser.error("--clients must include 1 (the latency figures)")
    # Stopped from outside (a timeout): unwind, so the services started here are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = measure(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
