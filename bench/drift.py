"""The drift check's cost: how long one check takes for a site with `--films` recorded predictions
(default 100,000, the most `CXR_DRIFT_MAX_FILMS` keeps), and what recording one film costs a job.

Fills one site's record in Redis (`CXR_REDIS_URL`, under a site name of its own, removed at the
end) with films drawn from the bundled version's reference (the highest version under
`models/cxr-pneumonia/`), each value jittered so no two films are alike, then runs the check the
worker runs (`services.worker.drift.run_drift_check`, with the reference read from `models/`)
`--repeat` times, timing the read of the window (Redis and parsing) and the tests apart. Prints a
Markdown table; `--json` writes the numbers.

    python -m bench.drift --films 100000 --json out/bench/drift.json

`--real-films` prints instead each statistic's KS D and PSI for `nih_adult` and
`site_acceptance` against the bundled version's reference (the figures in docs/monitoring.md; loads
TensorFlow and runs the model over 813 films):

    python -m bench.drift --real-films
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import numpy as np

from bench.serving_latency import ROOT, latest_bundled_model
from services.worker.drift import read_reference, run_drift_check
from services.worker.settings import WorkerSettings
from shared.drift import STATISTICS, DriftRecorder, DriftReference, compare
from shared.redis_clients import redis_client
from shared.storage import LocalStorage

MODELS = ROOT / "models"
MODEL_NAME = "cxr-pneumonia"
VERSION = int(latest_bundled_model().name)  # the bundled version
DATA = ROOT.parent / "shared" / "data"
CHUNK = 10_000


def synthetic_films(reference: DriftReference, count: int, seed: int = 0) -> list[dict]:
    """`count` films whose statistics are the reference's values drawn at random, jittered."""
    rng = np.random.default_rng(seed)
    columns = {}
    for name, stat in reference.statistics.items():
        drawn = rng.choice(stat.values, count)
        spread = float(np.std(stat.values)) or 1.0
        columns[name] = drawn + rng.normal(0, 0.01 * spread, count)
    return [{name: float(values[i]) for name, values in columns.items()} for i in range(count)]


def measure(args: argparse.Namespace) -> dict:
    settings = WorkerSettings(model_base_path=str(MODELS), drift_max_films=args.films)
    storage = LocalStorage(MODELS)
    reference = read_reference(storage, MODEL_NAME, VERSION)
    if reference is None:
        raise SystemExit(f"version {VERSION} has no drift reference under {MODELS}")
    client = redis_client(settings.redis_url)
    recorder = DriftRecorder(client, max_films=args.films,
                             window_s=settings.drift_window_days * 86400)
    site = f"bench-drift-{uuid.uuid4().hex[:8]}"
    films = synthetic_films(reference, args.films)
    now = time.time()
    try:
        # One film at a time, as a job records it: the cost each answered film pays.
        single = []
        for i in range(args.single):
            start = time.perf_counter()
            recorder.record(site, f"single-{i}", VERSION, films[i], now=now - args.films - i)
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        for first in range(0, args.films, CHUNK):
            recorder.record_many(site, [(f"job-{i}", VERSION, films[i], now - i)
                                        for i in range(first, min(first + CHUNK, args.films))])
        fill_s = time.perf_counter() - start
        kept = client.zcard(f"cxr:drift:films:{site}")
        memory = client.memory_usage(f"cxr:drift:films:{site}")

        whole, reads, tests = [], [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            window = recorder.window(site, now + 1)
            read_s = time.perf_counter() - start
            compare(window, reference, test=settings.drift_test,
                    threshold=settings.drift_threshold, min_films=settings.drift_min_films)
            tests.append(time.perf_counter() - start - read_s)
            reads.append(read_s)
            # The worker's whole pass (it reads the reference file too), on this site only.
            only_this = _OneSite(recorder, site)
            start = time.perf_counter()
            results = run_drift_check(settings, only_this, storage, now=now + 1)
            whole.append(time.perf_counter() - start)
        assert results and results[0].films == args.films, results
    finally:
        recorder.forget(site)
        client.close()
    return {
        "films": args.films, "kept": kept, "statistics": len(STATISTICS),
        "redis_bytes": memory, "cpu_count": os.cpu_count(), "repeat": args.repeat,
        "record_one_ms_p50": round(statistics.median(single) * 1000, 3),
        "fill_films_per_s": round(args.films / fill_s),
        "check_s": {"median": round(statistics.median(whole), 3), "min": round(min(whole), 3),
                    "max": round(max(whole), 3)},
        "read_window_s_median": round(statistics.median(reads), 3),
        "tests_s_median": round(statistics.median(tests), 3),
        "alert": results[0].alert, "max_ks": round(max(results[0].ks.values()), 4),
    }


class _OneSite:
    """The recorder seen by the check, limited to the bench's own site."""

    def __init__(self, recorder: DriftRecorder, site: str) -> None:
        self.recorder, self.site = recorder, site

    def sites(self) -> list[str]:
        return [self.site]

    def window(self, site: str, now: float | None = None):
        return self.recorder.window(site, now)


def real_films() -> dict:
    from services.trainer.artifact.drift_reference import model_outputs
    from services.trainer.data.dataset import load_images, scan_dataset
    from shared.drift import batch_statistics, decode_films, encode_film

    reference = read_reference(LocalStorage(MODELS), MODEL_NAME, VERSION)
    assert reference is not None
    found = {}
    for name in ("site_acceptance", "nih_adult"):
        images = load_images(scan_dataset(DATA / name))
        stats = batch_statistics(images, model_outputs(MODELS / MODEL_NAME / str(VERSION), images))
        films = decode_films(name, [encode_film(f"{name}-{i}", VERSION, s)
                                    for i, s in enumerate(stats)])
        result = compare(films, reference, test="ks", threshold=0.25, min_films=1)
        found[name] = {"films": films.films, "ks": result.ks, "psi": result.psi}
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__)
    parser.add_argument("--films", type=int, default=100_000, help="recorded films of the site")
    parser.add_argument("--repeat", type=int, default=5, help="checks to time")
    parser.add_argument("--single", type=int, default=500,
                        help="films recorded one at a time, to time a job's own record")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--real-films", action="store_true",
                        help="KS and PSI of nih_adult and site_acceptance instead")
    args = parser.parse_args(argv)
    if args.real_films:
        found = real_films()
        names = list(next(iter(found.values()))["ks"])
        print("| statistic | " + " | ".join(f"{s} KS D | {s} PSI" for s in found) + " |")
        print("|---|" + "---|---|" * len(found))
        for name in names:
            cells = " | ".join(f"{found[s]['ks'][name]:.3f} | {found[s]['psi'][name]:.3f}"
                               for s in found)
            print(f"| `{name}` | {cells} |")
        result: dict = found
    else:
        result = measure(args)
        check = result["check_s"]
        print("| films | check, median (min-max) | read window | tests | record one film, p50 "
              "| Redis memory |")
        print("|---|---|---|---|---|---|")
        print(f"| {result['films']:,} | {check['median']} s ({check['min']}-{check['max']}) | "
              f"{result['read_window_s_median']} s | {result['tests_s_median']} s | "
              f"{result['record_one_ms_p50']} ms | {result['redis_bytes'] / 1e6:.1f} MB |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
