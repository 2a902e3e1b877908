"""Training speed of the default recipe's network: images/s over a few dozen steps on real X-rays.

The network, optimiser, loss, batch size and augmented input stream are the default recipe's
(`services.trainer`: `TrainConfig.from_settings()`, `build_network`, the training stream of
`fit_cnn`); the images are the first patients of CXR_DATA_DIR's training splits. The first steps
(graph tracing) are not timed. Reports images/s, and the epoch and 20-epoch times that implies
for the full training set less the validation share.

Usage: `python -m bench.training_throughput [--steps 40] [--warmup 5] [--json OUT]`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.serving_latency import ROOT


def measure(steps: int, warmup: int) -> dict:
    import keras

    from services.trainer.data.dataset import load_images, scan_dataset
    from services.trainer.modeling.cnn_training import class_labels, training_stream
    from services.trainer.modeling.config import TrainConfig
    from services.trainer.modeling.model import build_network
    from services.trainer.modeling.recipe import subsample

    config = TrainConfig.from_settings()
    root = Path(config.data_dir)
    splits = [split for split in config.data_splits if (root / split).is_dir()]
    # No duplicate search (it hashes every image): only the count and some patients are needed.
    records = scan_dataset(root, splits or None, find_duplicates=False)
    used = subsample(records, config.batch_size * 8, seed=config.seed)
    images = load_images(used, config.image_size, cache_dir=config.cache_dir)
    model = build_network(config.backbone, image_size=config.image_size, width=config.width,
                          dropout=config.dropout, seed=config.seed,
                          frozen_blocks=config.frozen_blocks)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))

    ends: list[float] = []

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None) -> None:
            ends.append(time.perf_counter())

    model.fit(training_stream(images, class_labels(used), config), epochs=1,
              steps_per_epoch=warmup + steps, callbacks=[StepClock()], verbose=0,
              shuffle=False)
    seconds = ends[-1] - ends[warmup - 1]
    images_per_s = steps * config.batch_size / seconds
    train_images = round(len(records) * (1 - config.validation_fraction))
    epoch_s = train_images / images_per_s
    return {
        "batch_size": config.batch_size,
        "width": config.width,
        "image_size": config.image_size,
        "steps_timed": steps,
        "images_per_s": images_per_s,
        "ms_per_step": seconds / steps * 1000,
        "training_images": train_images,
        "epoch_s": epoch_s,
        "epochs": config.epochs,
        "epochs_s": epoch_s * config.epochs,
        "cpu_count": os.cpu_count(),
        "images_loaded": len(used),
    }


def report(result: dict) -> str:
    return (
        f"default recipe network (width {result['width']}, {result['image_size']} px, batch "
        f"{result['batch_size']}, augmented): {result['images_per_s']:.1f} images/s "
        f"({result['ms_per_step']:.0f} ms a step over {result['steps_timed']} steps)\n"
        f"implied: {result['epoch_s']:.0f} s an epoch of {result['training_images']} images, "
        f"{result['epochs_s'] / 60:.1f} min for {result['epochs']} epochs (network fitting only)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "out" / "bench" / "training_throughput.json")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--steps and --warmup must be at least 1")
    result = measure(args.steps, args.warmup)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
