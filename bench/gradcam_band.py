"""Where a model's Grad-CAM looks: the share of the heatmap's mass in the film's outer band.

Laterality markers, rulers, shoulders and the collimation edge sit near the border of a chest
film; the lungs do not. For every image of a Kaggle-layout folder the exported `gradcam`
signature gives the heatmap of p(pneumonia); this reports the mean and median share of its mass
within `--band` of the edge (default 0.15 of the side), beside the share of the area the band
covers (what an even heatmap would give), for all films and per label.

    python -m bench.gradcam_band --model DIR --data DIR [--band 0.15] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.evaluation.metrics import outer_band_share
from shared.contract import GRADCAM_SIGNATURE, HEATMAP, INPUT_NAME


def heatmaps_of(model_dir: Path, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    import tensorflow as tf

    gradcam = tf.saved_model.load(str(model_dir)).signatures[GRADCAM_SIGNATURE]
    parts = [gradcam(**{INPUT_NAME: tf.constant(images[i:i + batch_size])})[HEATMAP].numpy()
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)


def summary(shares: np.ndarray) -> dict:
    shares = shares[np.isfinite(shares)]
    return {"n": int(len(shares)), "mean": float(shares.mean()),
            "median": float(np.median(shares))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="exported version folder")
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout data folder")
    parser.add_argument("--band", type=float, default=0.15, help="band width, share of the side")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    records = scan_dataset(args.data, find_duplicates=False)
    images = load_images(records)
    shares = outer_band_share(heatmaps_of(args.model, images), args.band)
    labels = np.array([r.label for r in records])
    even = float(outer_band_share(np.ones((1, *images.shape[1:3])), args.band)[0])
    result = {"model": str(args.model), "data": str(args.data), "band": args.band,
              "even_heatmap_share": even, "all": summary(shares),
              **{label: summary(shares[labels == label]) for label in sorted(set(labels))}}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
