"""Where a model's Grad-CAM looks: the share of the heatmap's mass in the film's outer band.

Laterality markers, rulers, shoulders and the collimation edge sit near the border of a chest
film; the lungs do not. For every image of a Kaggle-layout folder the exported `gradcam`
signature gives the heatmap of p(pneumonia); this reports the mean and median share of its mass
within `--band` of the edge (default 0.15 of the side), beside the share of the area the band
covers (what an even heatmap would give), for all films and per label.

A heatmap is one explanation of the network, not the network. With `--occlusion` it also asks the
network itself: the films are scored again with the band filled with each film's median grey, and
again with the centre (everything inside the band) filled; it reports the AUROC of each and the
mean change in p(pneumonia). A network that reads the lungs loses little to the first and much
to the second.

    python -m bench.gradcam_band --model DIR --data DIR [--band 0.15] [--occlusion] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.evaluation.metrics import outer_band_mask, outer_band_share
from shared.contract import GRADCAM_SIGNATURE, HEATMAP, INPUT_NAME


def heatmaps_of(model_dir: Path, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    import tensorflow as tf

    gradcam = tf.saved_model.load(str(model_dir)).signatures[GRADCAM_SIGNATURE]
    parts = [gradcam(**{INPUT_NAME: tf.constant(images[i:i + batch_size])})[HEATMAP].numpy()
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)


def filled(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`images` [N, S, S, 1] with the pixels of `mask` [S, S] set to each film's median grey."""
    out = images.copy()
    medians = np.median(images.reshape(len(images), -1), axis=1).astype(images.dtype)
    out[:, mask, :] = medians[:, None, None]
    return out


def occlusion(model_dir: Path, images: np.ndarray, y: np.ndarray, band: float) -> dict:
    """AUROC and mean |change| in p(pneumonia) with the band, then the centre, filled."""
    from sklearn.metrics import roc_auc_score

    from services.trainer.artifact.scoring import score_saved_model

    mask = outer_band_mask(*images.shape[1:3], band)
    base = score_saved_model(model_dir, images).p_pneumonia
    result = {"auroc": float(roc_auc_score(y, base))}
    for name, region in (("band_filled", mask), ("centre_filled", ~mask)):
        p = score_saved_model(model_dir, filled(images, region)).p_pneumonia
        result[name] = {"auroc": float(roc_auc_score(y, p)),
                        "mean_abs_change": float(np.abs(p - base).mean())}
    return result


def summary(shares: np.ndarray) -> dict:
    shares = shares[np.isfinite(shares)]
    return {"n": int(len(shares)), "mean": float(shares.mean()),
            "median": float(np.median(shares))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="exported version folder")
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout data folder")
    parser.add_argument("--band", type=float, default=0.15, help="band width, share of the side")
    parser.add_argument("--occlusion", action="store_true",
                        help="also score the films with the band, then the centre, filled")
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
    if args.occlusion:
        result["occlusion"] = occlusion(args.model, images, (labels == "PNEUMONIA").astype(int),
                                        args.band)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
