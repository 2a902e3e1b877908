"""The baseline `bench.e2e` compares the service with: what a user would write instead.

One process: a FastAPI endpoint that decodes the upload with `shared.imaging`, calls the exported
SavedModel in-process and answers in the same request, served by uvicorn with TLS. By default it
does the service's work per image (prediction, Grad-CAM, the heatmap PNG); `?heatmap=false` gives
the prediction alone. No queue, no storage, no job records, no API keys.

`python -m bench.inprocess_app --model-dir DIR --port N --certfile CRT --keyfile KEY`
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

import numpy as np
import tensorflow as tf
import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from shared.contract import SERVING_SIGNATURE
from shared.errors import ImageError
from shared.heatmap import render_overlay
from shared.imaging import decode_xray, to_model_input
from shared.settings import SharedSettings

HEATMAP_MAX_SIDE = SharedSettings.model_fields["heatmap_max_side"].default  # the service's


def create_app(model_dir: Path, image_size: int = 224) -> FastAPI:
    model = tf.saved_model.load(str(model_dir))
    classify = model.signatures[SERVING_SIGNATURE]
    gradcam = model.signatures["gradcam"]
    one_call = set(classify.structured_outputs) <= set(gradcam.structured_outputs)
    app = FastAPI(title="in-process baseline")

    def predict_bytes(data: bytes, heatmap: bool) -> dict:
        try:
            decoded = decode_xray(data)
        except ImageError as exc:
            raise HTTPException(exc.http_status, exc.message) from exc
        image = tf.constant(to_model_input(decoded.pixels, image_size)[np.newaxis])
        # As the worker does: one call when the Grad-CAM signature also gives the prediction.
        outputs = gradcam(image=image) if heatmap and one_call else classify(image=image)
        probability = float(outputs["pneumonia_probability"][0])
        threshold = float(outputs["threshold"][0])
        answer = {
            "label": "PNEUMONIA" if probability >= threshold else "NORMAL",
            "pneumonia_probability": probability,
            "threshold": threshold,
            "class_probabilities": outputs["class_probabilities"][0].numpy().tolist(),
        }
        if heatmap:
            cam = (outputs if one_call else gradcam(image=image))["heatmap"][0].numpy()
            answer["heatmap_png_bytes"] = len(render_overlay(decoded.pixels, cam, HEATMAP_MAX_SIDE))
        return answer

    @app.post("/predict")
    async def predict(file: Annotated[UploadFile, File()],
                      heatmap: Annotated[bool, Query()] = True) -> dict:
        return await run_in_threadpool(predict_bytes, await file.read(), heatmap)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", type=Path, required=True)
    parser.add_argument("--keyfile", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model_dir), host=args.host, port=args.port,
                ssl_certfile=str(args.certfile), ssl_keyfile=str(args.keyfile),
                log_level="warning")


if __name__ == "__main__":
    main()
