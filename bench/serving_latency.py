"""What the gRPC hop to the model server costs: the same SavedModel called in-process and through
`python -m services.model_server` with the worker's own `ServingClient`.

Reports Predict latency p50/p99 at batch 1 and throughput at batch 8 and 32, both ways, and the
ratios. The two ways are timed call by call in turn (in-process, then gRPC, then in-process...),
so a machine that speeds up or slows down during the run moves both alike. Beside them, the floor
of the hop on this machine: a `GetModelStatus` round trip (no tensors), and `Predict` on a
SavedModel that only averages its input (the same [1, 224, 224, 1] image over the wire, next to
no model work). Usage: `python -m bench.serving_latency [--model-dir DIR] [--requests N]
[--json OUT]`.
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

from shared.contract import INPUT_NAME, MODEL_NAME, SERVING_SIGNATURE

ROOT = Path(__file__).resolve().parents[1]
FLOOR_MODEL = "mean"


def latest_bundled_model() -> Path:
    versions = sorted((ROOT / "models" / MODEL_NAME).glob("[0-9]*"), key=lambda p: int(p.name))
    if not versions:
        raise SystemExit(f"no bundled model under models/{MODEL_NAME}/: pass --model-dir")
    return versions[-1]


def sample_batch(size: int) -> np.ndarray:
    """Real sample X-rays through the shared preprocessing, repeated up to `size`."""
    from shared.imaging import decode_xray, to_model_input

    files = sorted((ROOT / "data" / "sample").glob("*/*.jpeg"))
    images = [to_model_input(decode_xray(f.read_bytes()).pixels) for f in files]
    return np.stack([images[i % len(images)] for i in range(size)])


def time_in_turn(calls: dict[str, Callable[[], object]], count: int,
                 warmup: int = 10) -> dict[str, np.ndarray]:
    """Seconds of each call, `count` rounds that run every call once in turn."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return {name: np.array(values) for name, values in seconds.items()}


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


def write_mean_model(path: Path, image_shape: tuple[int, ...]) -> None:
    """A SavedModel taking images of `image_shape` (uint8) and doing next to no work with them:
    the hop's floor."""
    import tensorflow as tf

    class Mean(tf.Module):
        spec = tf.TensorSpec([None, *image_shape], tf.uint8, name=INPUT_NAME)

        @tf.function(input_signature=[spec])
        def serve(self, image):
            pixels = tf.cast(image, tf.float32)
            return {"pneumonia_probability": tf.reduce_mean(pixels, axis=[1, 2, 3]) / 255.0}

    module = Mean()
    tf.saved_model.save(module, str(path), signatures={SERVING_SIGNATURE: module.serve})


def in_process_handler(version_dir: Path, batch: np.ndarray):
    """The model server's own `Predict` handler over `version_dir`, and a request for `batch`:
    what the server does for a call, without the transport."""
    from tensorflow_serving.apis import predict_pb2

    from services.model_server.grpc_api import PredictionServicer
    from services.model_server.servable import LoadedVersion
    from shared.tensors import to_tensor_proto

    version = LoadedVersion(FLOOR_MODEL, 1, version_dir)

    class OneVersion:
        def resolve(self, _spec):
            return version

    request = predict_pb2.PredictRequest()
    request.model_spec.name = FLOOR_MODEL
    request.inputs[INPUT_NAME].CopyFrom(to_tensor_proto(batch))
    return PredictionServicer(OneVersion()), request


def write_model_config(path: Path, models: dict[str, Path]) -> None:
    """A TF Serving model config file serving each named model from its base folder."""
    from google.protobuf import text_format

    from services.model_server.model_config import single_model_config

    configs = [single_model_config(name, str(base)) for name, base in models.items()]
    for other in configs[1:]:
        configs[0].MergeFrom(other)  # appends its model to the list
    path.write_text(text_format.MessageToString(configs[0]))


def start_model_server(config: Path, grpc_port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [
        sys.executable,
        "-m",
        "services.model_server",
        "--port",
        str(grpc_port),
        "--rest_api_port",
        "0",
        "--model_config_file",
        str(config),
        "--file_system_poll_wait_seconds",
        "0",
    ]
    return subprocess.Popen(
        argv, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )


def wait_until_serving(client, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            client.metadata()
            return
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(log_path.read_text()[-3000:]) from None
            time.sleep(0.5)


def measure(model_dir: Path, requests: int) -> dict:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from services.worker.grpc_serving import ServingClient

    batches = {size: sample_batch(size) for size in (1, 8, 32)}
    calls = {1: requests, 8: max(20, requests // 8), 32: max(10, requests // 32)}
    signature = tf.saved_model.load(str(model_dir)).signatures[SERVING_SIGNATURE]

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        shutil.copytree(model_dir, base / MODEL_NAME / "1")
        write_mean_model(base / FLOOR_MODEL / "1", batches[1].shape[1:])
        config = base / "models.config"
        write_model_config(config, {name: base / name for name in (MODEL_NAME, FLOOR_MODEL)})
        port = free_port()
        log_path = base / "model-server.log"
        server = start_model_server(config, port, log_path)
        try:
            client = ServingClient(f"127.0.0.1:{port}", MODEL_NAME, timeout_s=30)
            floor_client = ServingClient(f"127.0.0.1:{port}", FLOOR_MODEL, timeout_s=30)
            wait_until_serving(client, server, log_path)
            wait_until_serving(floor_client, server, log_path)
            in_process, over_grpc = {}, {}
            for size, batch in batches.items():
                tensor = tf.constant(batch)
                seconds = time_in_turn({
                    "in_process": lambda t=tensor: signature(image=t),
                    "grpc": lambda b=batch: client.predict(b),
                }, calls[size])
                in_process[size] = summarise(seconds["in_process"], size)
                over_grpc[size] = summarise(seconds["grpc"], size)
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
            status_request = get_model_status_pb2.GetModelStatusRequest()
            status_request.model_spec.name = MODEL_NAME
            mean_signature = tf.saved_model.load(str(base / FLOOR_MODEL / "1")).signatures[
                SERVING_SIGNATURE]
            one_image = tf.constant(batches[1])
            handler, handler_request = in_process_handler(base / FLOOR_MODEL / "1", batches[1])
            floor = time_in_turn({
                "status": lambda: status(status_request, timeout=30),
                "mean_in_process": lambda: mean_signature(image=one_image),
                "mean_handler": lambda: handler.Predict(handler_request, None),
                "mean_grpc": lambda: floor_client.predict(batches[1]),
            }, requests)
            channel.close()
            client.close()
            floor_client.close()
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
        "floor": {
            "get_model_status_p50_ms": float(np.percentile(floor["status"], 50) * 1000),
            "mean_model_in_process_p50_ms": float(np.percentile(floor["mean_in_process"], 50)
                                                  * 1000),
            "mean_model_handler_p50_ms": float(np.percentile(floor["mean_handler"], 50) * 1000),
            "mean_model_grpc_p50_ms": float(np.percentile(floor["mean_grpc"], 50) * 1000),
        },
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
    floor = result["floor"]
    lines.append(
        f"\ngRPC hop at batch 1 (p50): {result['grpc_hop_p50_ms']:.2f} ms "
        f"({result['latency_ratio_p50_batch1']:.2f}x in-process); throughput gRPC/in-process: "
        f"batch 8 {ratios['8']:.2f}, batch 32 {ratios['32']:.2f}"
        f"\nFloor over gRPC (p50): GetModelStatus {floor['get_model_status_p50_ms']:.2f} ms, "
        f"a mean-only model {floor['mean_model_grpc_p50_ms']:.2f} ms over gRPC against "
        f"{floor['mean_model_in_process_p50_ms']:.2f} ms in-process and "
        f"{floor['mean_model_handler_p50_ms']:.2f} ms through the server's Predict handler "
        "in-process"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "out" / "bench" / "serving_latency.json"
    )
    args = parser.parse_args(argv)
    result = measure((args.model_dir or latest_bundled_model()).resolve(), args.requests)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
