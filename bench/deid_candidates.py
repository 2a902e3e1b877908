"""De-identifiers compared on the identifier corpus of the tests (`tests/shared/identified_dicom`).

For each candidate: which identifier values are still in the written file (by class), which of the
attributes the model and the screening need were changed or lost, whether the file still decodes,
whether UID replacement is the same in every process (the job identity depends on it), and the
time per instance. Candidates not installed are reported as such.

    PYTHONPATH=. .venv/bin/python -m bench.deid_candidates [--instances 20] [--json out.json]

The PyPI candidates are not project dependencies; install them beside it to measure them:
`uv pip install --python .venv/bin/python dicognito==0.19.0 deid==0.4.13 dicom-anonymizer==2.1.0`.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from shared.imaging import DecodeLimits, decode_xray
from tests.shared import identified_dicom as corpus
from tests.shared.xray_files import dicom_bytes

Deidentifier = Callable[[Dataset], Dataset]
CLASSES = {
    "names": corpus.NAMES, "IDs": corpus.IDS, "places": corpus.PLACES, "free text": corpus.TEXTS,
    "dates": (*corpus.DATES, "AcquisitionDateTime"), "UIDs": corpus.UIDS,
    "the four (issue)": ("RequestedProcedureID", "PlacerOrderNumberImagingServiceRequest",
                         "ServiceEpisodeID", "CurrentPatientLocation"),
}
PREFIXES = {"sequences": ":", "private tags": "private:", "overlay": "overlay:"}


def _project() -> Deidentifier:
    from shared.dicom_intake.deidentify import deidentify
    return deidentify


def _dicom_anonymizer() -> Deidentifier:
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions

    def run(dataset: Dataset) -> Dataset:
        out = copy.deepcopy(dataset)
        anonymize_dataset(out, delete_private_tags=True,
                          base_rules_gen=lambda: initialize_actions("dicomfields_2026c"))
        return out
    return run


def _dicognito() -> Deidentifier:
    from dicognito.anonymizer import Anonymizer

    def run(dataset: Dataset) -> Dataset:
        out = copy.deepcopy(dataset)
        Anonymizer(seed="bench").anonymize(out)
        return out
    return run


def _deid() -> Deidentifier:
    from deid.dicom import replace_identifiers

    def run(dataset: Dataset) -> Dataset:
        # deid reads files: a Dataset passed in fails with "unhashable type: 'Dataset'"
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "instance.dcm"
            path.write_bytes(dicom_bytes(copy.deepcopy(dataset)))
            return replace_identifiers([str(path)], remove_private=True)[0]
    return run


CANDIDATES: dict[str, Callable[[], Deidentifier]] = {
    "project (shared.dicom_intake.deidentify)": _project,
    "dicom-anonymizer 2.1.0 (table 2026c)": _dicom_anonymizer,
    "dicognito 0.19.0": _dicognito,
    "deid 0.4.13 (default recipe)": _deid,
}


def _left_by_class(instance: corpus.IdentifiedInstance, written: bytes) -> dict[str, int]:
    found = set(instance.found_in(written))
    counts = {name: sum(1 for keyword in keywords if keyword in found)
              for name, keywords in CLASSES.items()}
    for name, prefix in PREFIXES.items():
        counts[name] = sum(1 for where in found
                           if (where.startswith(prefix) if prefix != ":" else
                               ":" in where and not where.startswith(("private", "overlay"))))
    counts["total"] = len(found)
    return counts


def _changed_kept(original: Dataset, out: Dataset) -> list[str]:
    return [keyword for keyword in corpus.KEPT
            if keyword not in out or out[keyword].value != original[keyword].value]


def _uid_in_another_process(name: str, uid: str) -> str | None:
    """The replacement of `uid` made by the candidate in a fresh Python process."""
    code = (f"import sys, json; sys.path[:0] = {sys.path!r}\n"
            "from bench.deid_candidates import CANDIDATES, probe\n"
            f"print(probe(CANDIDATES[{name!r}](), {uid!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    return result.stdout.strip().splitlines()[-1] if result.returncode == 0 else None


def probe(run: Deidentifier, uid: str) -> str:
    instance = corpus.identified_chest_dx()
    instance.dataset.SOPInstanceUID = uid
    return str(run(instance.dataset).get("SOPInstanceUID", ""))


def measure(name: str, make: Callable[[], Deidentifier], instances: int) -> dict[str, Any]:
    try:
        run = make()
    except ImportError as exc:
        return {"candidate": name, "installed": False, "error": str(exc)}
    limits = DecodeLimits(min_side=16)
    left: dict[str, int] = {}
    changed: set[str] = set()
    decode_failures, seconds, errors = 0, 0.0, []
    for _ in range(instances):
        instance = corpus.identified_chest_dx()
        start = time.perf_counter()
        try:
            out = run(instance.dataset)
            written = io.BytesIO()
            out.save_as(written, enforce_file_format=False)
        except Exception as exc:  # noqa: BLE001 - a candidate failing is a result
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        seconds += time.perf_counter() - start
        data = written.getvalue()
        for key, count in _left_by_class(instance, data).items():
            left[key] = left.get(key, 0) + count
        changed.update(_changed_kept(instance.dataset, dcmread(io.BytesIO(data), force=True)))
        try:
            decode_xray(dicom_bytes(out), limits)
        except Exception:  # noqa: BLE001
            decode_failures += 1
    uid = "1.2.3.4.5.6.7.8.9"
    try:
        here: str | None = probe(run, uid)
    except Exception:  # noqa: BLE001
        here = None
    there = _uid_in_another_process(name, uid) if here else None
    done = instances - len(errors)
    return {"candidate": name, "installed": True, "instances": instances, "errors": errors[:3],
            "identifiers_per_instance": len(corpus.identified_chest_dx().identifiers),
            "left": {key: value / max(done, 1) for key, value in left.items()},
            "kept_changed_or_lost": sorted(changed), "decode_failures": decode_failures,
            "uid_same_in_every_process": here == there and here not in (None, "", uid),
            "ms_per_instance": 1000 * seconds / max(done, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = [measure(name, make, args.instances) for name, make in CANDIDATES.items()]
    for result in results:
        print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
