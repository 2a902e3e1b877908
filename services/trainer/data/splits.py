"""Patient-grouped hold-out splits and cross-validation folds.

The unit that is never cut is a patient, with patients that share a duplicate group (identical
pixels under two names) merged into one unit, so no image, and no copy of it, is on both sides.
Stratified by class (normal, bacterial, viral) so every part keeps the class mix.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from services.trainer.data.naming import parse_file_name
from services.trainer.data.records import XrayRecord
from shared.contract import UNKNOWN_SUBTYPE

Strategy = Literal["random", "lowest"]


def patient_groups(records: Sequence[XrayRecord]) -> np.ndarray:
    """One integer per record: records with the same value must stay in the same part."""
    patients = {p: i for i, p in enumerate(sorted({r.patient for r in records}))}
    dup_groups = {g: len(patients) + i
                  for i, g in enumerate(sorted({r.dup_group for r in records if r.dup_group}))}
    # A graph of patient nodes and duplicate-group nodes; its connected components are the units.
    edges = [(patients[r.patient], dup_groups[r.dup_group]) for r in records if r.dup_group]
    rows = np.array([a for a, _ in edges], dtype=np.int64)
    cols = np.array([b for _, b in edges], dtype=np.int64)
    size = len(patients) + len(dup_groups)
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    return np.array([component[patients[r.patient]] for r in records], dtype=np.int64)


def stratification_classes(records: Sequence[XrayRecord]) -> np.ndarray:
    """0 normal, 1 bacterial, 2 viral, UNKNOWN_SUBTYPE pneumonia of unknown subtype."""
    return np.array([UNKNOWN_SUBTYPE if r.class_index is None else r.class_index
                     for r in records], dtype=np.int64)


def split_by_patient(records: Sequence[XrayRecord], fraction: float, seed: int = 0,
                     strategy: Strategy = "random") -> tuple[list[XrayRecord], list[XrayRecord]]:
    """`(rest, held)`: about `fraction` of the images of every class held out, whole patients only.

    "random" draws patients at random (by `seed`) within each class (normal, bacterial, viral; a
    patient counts in the class of most of their images). "lowest" holds out the lowest-numbered
    patients of each label and name series (person123, IM-0115, NORMAL2-IM-0588), the way the
    official test split was cut; it keeps the NORMAL/PNEUMONIA mix but not the subtype mix, since
    about half the pneumonia patients have images of both subtypes.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    if strategy not in ("random", "lowest"):
        raise ValueError(f"strategy must be 'random' or 'lowest', got {strategy!r}")
    if not records:
        raise ValueError("no records to split")
    groups = patient_groups(records)
    units = _units(records, groups, strategy)
    rng = np.random.default_rng(seed)
    held_units: set[int] = set()
    considered: dict[int, list[list[tuple[int, int]]]] = defaultdict(list)  # by label
    for stratum in sorted(units):
        members = units[stratum]
        if strategy == "random":
            members = [members[i] for i in rng.permutation(len(members))]
        held_units |= _take_about(members, fraction, stop_at_first_miss=strategy == "lowest")
        considered[0 if stratum[0] == 0 else 1].append(members)
    for strata in considered.values():
        _hold_one_of_each_label(strata, held_units)
    held = [r for r, g in zip(records, groups, strict=True) if g in held_units]
    rest = [r for r, g in zip(records, groups, strict=True) if g not in held_units]
    return rest, held


def _units(records: Sequence[XrayRecord], groups: np.ndarray,
           strategy: Strategy) -> dict[tuple, list[tuple[int, int]]]:
    """Units as `(unit id, image count)` by stratum, in the order they are considered."""
    classes = stratification_classes(records)
    unit_classes: dict[int, Counter[int]] = defaultdict(Counter)
    unit_sort_keys: dict[int, tuple] = {}
    unit_series: dict[int, str] = {}
    for record, group, cls in zip(records, groups, classes, strict=True):
        unit = int(group)
        unit_classes[unit][int(cls)] += 1
        parsed = parse_file_name(record.path.name)
        # Unnumbered names sort after every numbered patient, then by name, so "lowest" never
        # picks them before a real low number.
        key = (parsed.number is None, parsed.number or 0, record.patient)
        unit_sort_keys[unit] = min(key, unit_sort_keys.get(unit, key))
        unit_series[unit] = min(parsed.series or "", unit_series.get(unit, parsed.series or ""))
    strata: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for unit, counts in unit_classes.items():
        majority = min(counts, key=lambda cls: (-counts[cls], cls))  # ties: the lower class
        if strategy == "random":
            stratum: tuple = (majority,)
        else:
            stratum = (min(majority, 1), unit_series[unit])  # 0 normal, 1 pneumonia
        strata[stratum].append((unit, counts.total()))
    for members in strata.values():
        members.sort(key=lambda m: unit_sort_keys[m[0]])
    return strata


def _hold_one_of_each_label(strata: list[list[tuple[int, int]]], held_units: set[int]) -> None:
    """Hold the first unit of the label's largest stratum when rounding held none of the label.

    A small data set (or a patient merged with others by shared duplicates) can make every
    stratum's first unit larger than twice its share, and a held part without one of the labels
    cannot choose a threshold. A label with a single unit stays whole on the training side.
    """
    units = [unit for members in strata for unit, _ in members]
    if len(units) < 2 or held_units.intersection(units):
        return
    largest = max(strata, key=lambda members: (sum(size for _, size in members), -len(members)))
    held_units.add(largest[0][0])


def _take_about(units: list[tuple[int, int]], fraction: float,
                stop_at_first_miss: bool) -> set[int]:
    """Units taken in order while each brings the held image count closer to its target."""
    target = fraction * sum(size for _, size in units)
    taken: set[int] = set()
    held = 0
    for unit, size in units:
        if abs(held + size - target) < abs(held - target):
            taken.add(unit)
            held += size
        elif stop_at_first_miss:
            break
    return taken


def patient_folds(records: Sequence[XrayRecord], k: int,
                  seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """`k` (train indices, validation indices) pairs by scikit-learn's StratifiedGroupKFold.

    Stratified on the class (normal, bacterial, viral); grouped by patient, duplicates merged.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    groups = patient_groups(records)
    if len(set(groups.tolist())) < k:
        raise ValueError(f"{k} folds need at least {k} patients; the records hold "
                         f"{len(set(groups.tolist()))}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    classes = stratification_classes(records)
    return [(train.tolist(), val.tolist())
            for train, val in splitter.split(np.zeros(len(records)), classes, groups)]


def split_gate_set(records: Sequence[XrayRecord], fraction: float,
                   seed: int) -> tuple[list[XrayRecord], list[XrayRecord]]:
    """`(trainable, gate)`: whole patients held out for the gate, the same ones on every run."""
    return split_by_patient(records, fraction, seed=seed, strategy="random")
