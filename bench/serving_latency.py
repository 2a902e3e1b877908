"""What the gRPC hop to the model server costs: the same SavedModel called in-process and through
`python -m services.model_server` with the worker's own `ServingClient`.

Reports Predict latency p50/p99 at batch 1 and throughput at batch 8 and 32, both ways, and the
ratios. Usage: `python -m bench.serving_latency [--model-dir DIR] [--requests N] [--json OUT]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "cxr-pneumonia"


def latest_bundled_model() -> Path:
    versions = sorted((ROOT / "models" / MODEL_NAME).glob("[0-9]*"), key=lambda p: int(p.name))
    if not versions:
        raise SystemExit("no bundled model under models/cxr-pneumonia/: pass --model-dir")
    return versions[-1]


def sample_batch(size: int) -> np.ndarray:
    """Real sample X-rays through the shared preprocessing, repeated up to `size`."""
    from shared.imaging import decode_xray, to_model_input

    files = sorted((ROOT / "data" / "sample").glob("*/*.jpeg"))
    images = [to_model_input(decode_xray(f.read_bytes()).pixels) for f in files]
    return np.stack([images[i % len(images)] for i in range(size)])


def time_calls(call: Callable[[], object], count: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def summarise(seconds: np.ndarray, batch: int) -> dict[str, float]:
    return {
        "batch": batch,
        "calls": len(seconds),
        "p50_ms": float(np.percentile(seconds, 50) * 1000),
        "p99_ms": float(np.percentile(seconds, 99) * 1000),
        "images_per_s": float(batch * len(seconds) / seconds.sum()),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_model_server(base: Path, grpc_port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [
        sys.executable,
        "-m",
        "services.model_server",
        "--port",
        str(grpc_port),
        "--rest_api_port",
        "0",
        "--model_name",
        MODEL_NAME,
        "--model_base_path",
        str(base / MODEL_NAME),
        "--file_system_poll_wait_seconds",
        "0",
    ]
    return subprocess.Popen(
        argv, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )


def measure(model_dir: Path, requests: int) -> dict:
    import tensorflow as tf

    from services.worker.serving_client import ServingClient

    batches = {size: sample_batch(size) for size in (1, 8, 32)}
    calls = {1: requests, 8: max(20, requests // 8), 32: max(10, requests // 32)}
    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    in_process = {}
    for size, batch in batches.items():
        tensor = tf.constant(batch)
        in_process[size] = summarise(
            time_calls(lambda t=tensor: signature(image=t), calls[size]), size
        )

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        shutil.copytree(model_dir, base / MODEL_NAME / "1")
        port = free_port()
        server = start_model_server(base, port, base / "model-server.log")
        try:
            client = ServingClient(f"127.0.0.1:{port}", MODEL_NAME, timeout_s=30)
            deadline = time.monotonic() + 300
            while True:
                try:
                    client.metadata()
                    break
                except Exception:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit((base / "model-server.log").read_text()[-3000:]) from None
                    time.sleep(0.5)
            over_grpc = {
                size: summarise(time_calls(lambda b=batch: client.predict(b), calls[size]), size)
                for size, batch in batches.items()
            }
            client.close()
        finally:
            server.terminate()
            server.wait(60)

    return {
        "model_dir": str(
            model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir
        ),
        "cpu_count": os.cpu_count(),
        "in_process": {str(k): v for k, v in in_process.items()},
        "grpc": {str(k): v for k, v in over_grpc.items()},
        "grpc_hop_p50_ms": over_grpc[1]["p50_ms"] - in_process[1]["p50_ms"],
        "latency_ratio_p50_batch1": over_grpc[1]["p50_ms"] / in_process[1]["p50_ms"],
        "throughput_ratio": {
            str(k): over_grpc[k]["images_per_s"] / in_process[k]["images_per_s"] for k in (8, 32)
        },
    }


def report(result: dict) -> str:
    lines = ["| path | batch | p50 ms | p99 ms | images/s |", "|---|---|---|---|---|"]
    for path in ("in_process", "grpc"):
        for row in result[path].values():
            lines.append(
                f"| {path.replace('_', '-')} | {row['batch']} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {row['images_per_s']:.1f} |"
            )
    ratios = result["throughput_ratio"]
    lines.append(
        f"\ngRPC hop at batch 1 (p50): {result['grpc_hop_p50_ms']:.2f} ms "
        f"({result['latency_ratio_p50_batch1']:.2f}x in-process); throughput gRPC/in-process: "
        f"batch 8 {ratios['8']:.2f}, batch 32 {ratios['32']:.2f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "out" / "bench" / "serving_latency.json"
    )
    args = parser.parse_args()
    result = measure((args.model_dir or latest_bundled_model()).resolve(), args.requests)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
