"""Dataset tooling: file names, layouts, duplicates, patient-grouped splits and folds, pixels."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from services.trainer.data.dataset import (
    DatasetError,
    assign_duplicate_groups,
    data_fingerprint,
    load_images,
    scan_dataset,
)
from services.trainer.data.naming import ParsedName, parse_file_name
from services.trainer.data.records import XrayRecord
from services.trainer.data.splits import patient_folds, split_by_patient
from shared.imaging import decode_xray, to_model_input
from tests.trainer.dataset_layouts import (
    kaggle_flat_layout,
    kaggle_split_layout,
    noise,
    synthetic_records,
    write,
    write_png,
)

# --- file names -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("person1234_bacteria_3191.jpeg", ParsedName("person1234", "bacterial", "person", 1234)),
    ("person12_virus_44.jpeg", ParsedName("person12", "viral", "person", 12)),
    ("person447_virus_921_1.jpeg", ParsedName("person447", "viral", "person", 447)),
    ("IM-0115-0001.jpeg", ParsedName("IM-0115", None, "im", 115)),
    ("IM-0629-0001-0002.jpeg", ParsedName("IM-0629", None, "im", 629)),
    ("NORMAL2-IM-0588-0001.jpeg", ParsedName("NORMAL2-IM-0588", None, "normal2-im", 588)),
    ("person5_virus_10.dcm", ParsedName("person5", "viral", "person", 5)),
    ("IM-0007-0001", ParsedName("IM-0007", None, "im", 7)),
    ("chest scan 2024.png", ParsedName("chest scan 2024", None, None, None)),
    ("1.2.840.113619.2.55", ParsedName("1.2.840.113619.2.55", None, None, None)),
])
def test_file_names_give_patient_subtype_and_number(name: str, expected: ParsedName) -> None:
    assert parse_file_name(name) == expected


def test_class_index_is_normal_bacterial_viral_or_unknown() -> None:
    def record(label: str, subtype: str | None) -> XrayRecord:
        return XrayRecord(Path("x.jpeg"), label, subtype, "p")

    assert [record("NORMAL", None).class_index, record("PNEUMONIA", "bacterial").class_index,
            record("PNEUMONIA", "viral").class_index, record("PNEUMONIA", None).class_index] == [
        0, 1, 2, None]


# --- scanning ---------------------------------------------------------------------------------


def test_scan_reads_the_split_layout_and_skips_what_is_not_an_image(tmp_path: Path) -> None:
    records = scan_dataset(kaggle_split_layout(tmp_path))
    found = {r.relative_path: (r.label, r.subtype, r.patient) for r in records}
    assert found == {
        "test/NORMAL/IM-0002-0001.jpeg": ("NORMAL", None, "IM-0002"),
        "test/PNEUMONIA/scan-from-elsewhere.jpg": ("PNEUMONIA", None, "scan-from-elsewhere"),
        "train/NORMAL/IM-0115-0001.jpeg": ("NORMAL", None, "IM-0115"),
        "train/NORMAL/NORMAL2-IM-0588-0001.png": ("NORMAL", None, "NORMAL2-IM-0588"),
        "train/PNEUMONIA/person1234_bacteria_3191.jpeg": ("PNEUMONIA", "bacterial", "person1234"),
        "train/PNEUMONIA/person12_virus_44.jpeg": ("PNEUMONIA", "viral", "person12"),
        "train/PNEUMONIA/person12_virus_45": ("PNEUMONIA", "viral", "person12"),
        "train/PNEUMONIA/person77_virus_140.dcm": ("PNEUMONIA", "viral", "person77"),
        "val/NORMAL/IM-0001-0001.jpeg": ("NORMAL", None, "IM-0001"),
        "val/PNEUMONIA/person3_bacteria_10.jpeg": ("PNEUMONIA", "bacterial", "person3"),
    }
    assert [r.relative_path for r in records] == sorted(found)
    assert {r.split for r in records} == {"train", "val", "test"}
    assert all(r.dup_group is None for r in records)


def test_scan_keeps_only_the_splits_asked_for(tmp_path: Path) -> None:
    records = scan_dataset(kaggle_split_layout(tmp_path), splits=["train", "val"])
    assert Counter(r.split for r in records) == {"train": 6, "val": 2}
    with pytest.raises(DatasetError, match="unknown split"):
        scan_dataset(tmp_path, splits=["training"])


def test_scan_reads_the_flat_layout(tmp_path: Path) -> None:
    records = scan_dataset(kaggle_flat_layout(tmp_path))
    assert [(r.relative_path, r.split, r.class_index) for r in records] == [
        ("NORMAL/IM-0500-0001.png", None, 0),
        ("NORMAL/IM-0501-0001.png", None, 0),
        ("PNEUMONIA/clinic-upload-7.png", None, None),
        ("PNEUMONIA/person9_bacteria_1.png", None, 1),
        ("PNEUMONIA/person9_virus_2.png", None, 2),
    ]
    with pytest.raises(DatasetError, match="no train/val/test folders"):
        scan_dataset(tmp_path, splits=["train"])


def test_scan_refuses_a_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nowhere")
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        scan_dataset(tmp_path)


def test_an_unreadable_image_is_a_dataset_error_naming_the_file(tmp_path: Path) -> None:
    kaggle_flat_layout(tmp_path)
    write(tmp_path / "NORMAL" / "IM-0502-0001.jpeg", b"\xff\xd8\xff\xe0 cut off")
    with pytest.raises(DatasetError, match="IM-0502-0001.jpeg"):
        scan_dataset(tmp_path)


# --- duplicates -------------------------------------------------------------------------------


def test_duplicates_are_found_by_decoded_pixels_not_file_bytes(tmp_path: Path) -> None:
    pixels = noise("shared")
    write_png(tmp_path / "PNEUMONIA" / "person1_virus_1.png", pixels, compress_level=0)
    write_png(tmp_path / "PNEUMONIA" / "person2_virus_2.png", pixels, compress_level=9)
    write_png(tmp_path / "PNEUMONIA" / "person2_virus_3.png", noise("other"))
    first, second, third = scan_dataset(tmp_path)
    assert first.path.read_bytes() != second.path.read_bytes()
    assert first.dup_group == second.dup_group == "PNEUMONIA/person1_virus_1.png"
    assert third.dup_group is None


def test_duplicate_groups_can_be_given_precomputed_digests() -> None:
    records = [XrayRecord(Path("NORMAL", f"IM-000{i}-0001.jpeg"), "NORMAL", None, f"IM-000{i}")
               for i in range(3)]
    assign_duplicate_groups(records, ["a", "b", "a"])
    assert [r.dup_group for r in records] == ["NORMAL/IM-0000-0001.jpeg", None,
                                              "NORMAL/IM-0000-0001.jpeg"]
    with pytest.raises(ValueError, match="2 digests for 3 records"):
        assign_duplicate_groups(records, ["a", "b"])


# --- splits -----------------------------------------------------------------------------------


def _patients_and_groups(records: list[XrayRecord]) -> tuple[set[str], set[str]]:
    return {r.patient for r in records}, {r.dup_group for r in records if r.dup_group}


def _held_fraction_by_class(records: list[XrayRecord], held: list[XrayRecord]) -> dict[int, float]:
    total = Counter(r.class_index for r in records)
    return {cls: count / total[cls] for cls, count in Counter(r.class_index for r in held).items()}


@pytest.mark.parametrize("strategy", ["random", "lowest"])
def test_split_never_puts_a_patient_or_duplicate_group_on_both_sides(strategy: str) -> None:
    records = synthetic_records()
    assert {r.dup_group for r in records if r.dup_group and r.dup_group.startswith("cross")}
    rest, held = split_by_patient(records, 0.2, seed=3, strategy=strategy)
    assert sorted(map(id, rest + held)) == sorted(map(id, records))
    rest_patients, rest_groups = _patients_and_groups(rest)
    held_patients, held_groups = _patients_and_groups(held)
    assert not rest_patients & held_patients
    assert not rest_groups & held_groups


def test_random_split_holds_about_the_fraction_of_every_class() -> None:
    records = synthetic_records(cross_patient_duplicates=0)
    _, held = split_by_patient(records, 0.2, seed=1)
    assert len(held) == pytest.approx(0.2 * len(records), rel=0.05)
    for cls, fraction in _held_fraction_by_class(records, held).items():
        assert fraction == pytest.approx(0.2, abs=0.03), cls


def test_random_split_is_deterministic_by_seed() -> None:
    records = synthetic_records()

    def held_paths(seed: int) -> list[str]:
        return [r.relative_path for r in split_by_patient(records, 0.25, seed=seed)[1]]

    assert held_paths(7) == held_paths(7)
    assert held_paths(7) != held_paths(8)


def test_lowest_split_holds_the_lowest_numbered_patients_of_each_series() -> None:
    records = synthetic_records(cross_patient_duplicates=0)
    rest, held = split_by_patient(records, 0.15, strategy="lowest")

    def numbers(part: list[XrayRecord], series: str) -> set[int]:
        parsed = [parse_file_name(r.path.name) for r in part]
        return {p.number for p in parsed if p.series == series}

    for series in ("im", "normal2-im", "person"):
        held_numbers, rest_numbers = numbers(held, series), numbers(rest, series)
        assert held_numbers and rest_numbers
        assert max(held_numbers) < min(rest_numbers), series
        assert min(held_numbers) == 1
    for label in ("NORMAL", "PNEUMONIA"):
        share = sum(r.label == label for r in held) / sum(r.label == label for r in records)
        assert share == pytest.approx(0.15, abs=0.02), label
    assert split_by_patient(records, 0.15, seed=99, strategy="lowest")[1] == held


@pytest.mark.parametrize("strategy", ["random", "lowest"])
def test_a_small_split_holds_both_labels_even_when_rounding_would_hold_none(
        strategy: str) -> None:
    # Three normal patients of four films each and six pneumonia patients of one film: 15 % of
    # the normal films (1.8) is closer to none than to a whole patient (4).
    normal = [XrayRecord(path=Path(f"NORMAL/IM-{p:04d}-{i:04d}.jpeg"), label="NORMAL",
                         subtype=None, patient=f"IM-{p:04d}", split="train")
              for p in range(1, 4) for i in range(4)]
    pneumonia = [XrayRecord(path=Path(f"PNEUMONIA/person{p}_bacteria_{p}.jpeg"),
                            label="PNEUMONIA", subtype="bacterial", patient=f"person{p}",
                            split="train") for p in range(1, 7)]
    rest, held = split_by_patient(normal + pneumonia, 0.15, strategy=strategy)
    for part in (rest, held):
        assert {r.label for r in part} == {"NORMAL", "PNEUMONIA"}
    rest_patients, _ = _patients_and_groups(rest)
    held_patients, _ = _patients_and_groups(held)
    assert not rest_patients & held_patients


def test_a_label_with_one_patient_stays_on_the_training_side() -> None:
    records = [XrayRecord(path=Path(f"NORMAL/IM-0001-{i:04d}.jpeg"), label="NORMAL",
                          subtype=None, patient="IM-0001", split="train") for i in range(3)]
    records += [XrayRecord(path=Path(f"PNEUMONIA/person{p}_virus_{p}.jpeg"), label="PNEUMONIA",
                           subtype="viral", patient=f"person{p}", split="train")
                for p in range(1, 21)]
    rest, held = split_by_patient(records, 0.15, strategy="lowest")
    assert {r.label for r in held} == {"PNEUMONIA"}
    assert sum(r.label == "NORMAL" for r in rest) == 3


def test_split_refuses_nonsense_arguments() -> None:
    records = synthetic_records()
    for fraction in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            split_by_patient(records, fraction)
    with pytest.raises(ValueError, match="strategy"):
        split_by_patient(records, 0.2, strategy="newest")
    with pytest.raises(ValueError, match="no records"):
        split_by_patient([], 0.2)


# --- folds ------------------------------------------------------------------------------------


def test_folds_cover_every_record_once_and_keep_patients_and_duplicates_together() -> None:
    records = synthetic_records()
    folds = patient_folds(records, 5, seed=2)
    assert len(folds) == 5
    validation = sorted(i for _, val in folds for i in val)
    assert validation == list(range(len(records)))
    overall = Counter(r.class_index for r in records)
    for train, val in folds:
        assert sorted(train + val) == list(range(len(records)))
        train_patients, train_groups = _patients_and_groups([records[i] for i in train])
        val_patients, val_groups = _patients_and_groups([records[i] for i in val])
        assert not train_patients & val_patients
        assert not train_groups & val_groups
        val_counts = Counter(records[i].class_index for i in val)
        for cls, count in overall.items():
            assert val_counts[cls] / len(val) == pytest.approx(count / len(records), abs=0.04)
    assert patient_folds(records, 5, seed=2) == folds
    assert patient_folds(records, 5, seed=3) != folds


def test_folds_need_at_least_two_folds_and_enough_patients() -> None:
    records = synthetic_records()
    with pytest.raises(ValueError, match="at least 2"):
        patient_folds(records, 1)
    few = [r for r in records if r.patient in {"IM-0001", "IM-0002"}]
    with pytest.raises(ValueError, match="3 folds need at least 3 patients"):
        patient_folds(few, 3)


# --- fingerprint and pixels --------------------------------------------------------------------


def test_fingerprint_follows_content_and_names_not_location(tmp_path: Path) -> None:
    first = kaggle_split_layout(tmp_path / "one")
    second = tmp_path / "two"
    shutil.copytree(first, second)
    fingerprint = data_fingerprint(scan_dataset(first))
    assert data_fingerprint(scan_dataset(second)) == fingerprint
    assert data_fingerprint(list(reversed(scan_dataset(second)))) == fingerprint

    changed = second / "train" / "NORMAL" / "IM-0115-0001.jpeg"
    changed.write_bytes(changed.read_bytes() + b"\x00")
    assert data_fingerprint(scan_dataset(second)) != fingerprint
    shutil.rmtree(second)
    shutil.copytree(first, second)
    (second / "val" / "NORMAL" / "IM-0001-0001.jpeg").rename(
        second / "val" / "NORMAL" / "IM-0003-0001.jpeg")
    assert data_fingerprint(scan_dataset(second)) != fingerprint


def test_load_images_is_the_shared_preprocessing_of_every_record(tmp_path: Path) -> None:
    records = scan_dataset(kaggle_flat_layout(tmp_path))
    images = load_images(records, size=32)
    assert images.shape == (5, 32, 32, 1) and images.dtype == np.uint8
    for record, image in zip(records, images, strict=True):
        expected = to_model_input(decode_xray(record.path.read_bytes()).pixels, 32)
        np.testing.assert_array_equal(image, expected)


def test_load_images_reads_its_cache_back_and_misses_it_when_data_changes(tmp_path: Path) -> None:
    records = scan_dataset(kaggle_flat_layout(tmp_path / "data"))
    cache = tmp_path / "cache"
    images = load_images(records, size=32, cache_dir=cache)
    (cache_file,) = cache.glob("*.npy")
    np.save(cache_file, np.zeros_like(images))  # a cache hit now returns zeros
    assert not load_images(records, size=32, cache_dir=cache).any()
    np.testing.assert_array_equal(load_images(records[::-1], size=32, cache_dir=cache),
                                  images[::-1])
    write_png(records[0].path, noise("replaced", 100, 80))
    reloaded = load_images(records, size=32, cache_dir=cache)
    assert reloaded.any() and not np.array_equal(reloaded[0], images[0])
    assert len(list(cache.glob("*.npy"))) == 3
