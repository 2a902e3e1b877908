"""Figures of the scope screen that need more than one training run, and its added latency.

`loco`: leave one category out. For each out-of-scope category (the `out_of_scope/` folders,
the scikit-image samples) and each synthetic kind, a screen is trained without it and the share
of that category flagged (any check at or above its threshold) is measured, with a Wilson 95 %
interval; for synthetic kinds on freshly drawn images. Each run also reports its held-back
in-scope films flagged.

`latency`: a served version with the screen against the same version without it, at batch 1 in
process on one thread (medians of interleaved calls of `serving_default` and `gradcam`: wall
time, and the process's CPU time, which a busy machine disturbs less).

    PYTHONPATH=. python -m bench.scope_figures loco --data-root ../shared/data \\
        --cache out/scope-cache --steps 400 --json out/scope-loco.json
    PYTHONPATH=. python -m bench.scope_figures latency --without EXPORT_WITHOUT_SCREEN \\
        --with models/cxr-pneumonia/5 --json out/scope-latency.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

LOCO_CATEGORIES = ("other_radiograph", "ct", "natural_screenshot", "text_document", "noise",
                   "shapes", "gradient_flat", "skimage", "lateral_cxr")


def run_loco(args: argparse.Namespace) -> dict:
    from services.trainer.scope.data import SYNTHETIC_KINDS, load_scope_data, pool, synthesise
    from services.trainer.scope.evaluation import rate
    from services.trainer.scope.model import ScopeTrainConfig, flagged, train_screen

    data = load_scope_data(args.data_root, seed=args.seed, cache=args.cache)
    results = {}
    for category in args.categories or LOCO_CATEGORIES:
        started = time.monotonic()
        screen = train_screen(data, ScopeTrainConfig(steps=args.steps, seed=args.seed,
                                                     holdout=(category,), verbose=False))
        if category in SYNTHETIC_KINDS:
            held = pool(synthesise(category, 200, seed=args.seed + 1000))
        elif category == "lateral_cxr":
            held = data.lateral
        else:
            held = data.negatives[category]
        results[category] = {
            "held_out": rate(flagged(screen.scores(held), screen.thresholds)),
            "in_scope_held_back": rate(flagged(screen.scores(data.test_films),
                                               screen.thresholds)),
            "seconds": round(time.monotonic() - started),
        }
        print(category, json.dumps(results[category]), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)  # what is done so far
        args.json.write_text(json.dumps({"steps": args.steps, "categories": results}, indent=2))
    return {"steps": args.steps, "seed": args.seed, "categories": results}


def run_latency(args: argparse.Namespace) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    image = tf.constant(np.random.default_rng(0).integers(0, 256, (1, 224, 224, 1), np.uint8))
    loaded = {name: tf.saved_model.load(str(path))
              for name, path in (("without", args.without), ("with", args.with_))}
    result = {}
    for signature in ("serving_default", "gradcam"):
        calls = {name: model.signatures[signature] for name, model in loaded.items()}
        wall: dict[str, list[float]] = {name: [] for name in calls}
        cpu: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(10):  # warm-up
            for call in calls.values():
                call(image=image)
        for _ in range(args.repeats):
            for name, call in calls.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                call(image=image)
                wall[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
        medians = {name: float(np.median(t)) * 1000 for name, t in wall.items()}
        cpu_medians = {name: float(np.median(t)) * 1000 for name, t in cpu.items()}
        result[signature] = {"median_ms": medians,
                             "added_ms": medians["with"] - medians["without"],
                             "median_cpu_ms": cpu_medians,
                             "added_cpu_ms": cpu_medians["with"] - cpu_medians["without"]}
    return {"repeats": args.repeats, "threads": 1, **result}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scope_figures")
    sub = parser.add_subparsers(dest="command", required=True)
    loco = sub.add_parser("loco", help="leave-one-category-out detection")
    loco.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    loco.add_argument("--cache", type=Path)
    loco.add_argument("--steps", type=int, default=400)
    loco.add_argument("--seed", type=int, default=0)
    loco.add_argument("--category", action="append", dest="categories")
    loco.add_argument("--json", type=Path, required=True)
    latency = sub.add_parser("latency", help="added latency of the screen at batch 1")
    latency.add_argument("--without", type=Path, required=True)
    latency.add_argument("--with", dest="with_", type=Path, required=True)
    latency.add_argument("--repeats", type=int, default=200)
    latency.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    result = run_loco(args) if args.command == "loco" else run_latency(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
