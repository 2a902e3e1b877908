"""Dataset versions: base data plus confirmed films up to a cut-off, the manifest, the rebuild."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from services.trainer.cli.main import main
from services.trainer.data.dataset import DatasetError
from services.trainer.data.manifest import (
    DatasetManifest,
    parse_cutoff,
    rebuild_training_data,
)
from services.trainer.data.splits import split_by_patient
from shared.storage import LocalStorage
from tests.shared.xray_files import jpeg_bytes, png_bytes
from tests.trainer.dataset_layouts import (
    T0,
    base_layout,
    collect,
    confirm,
    dicom_film,
    noise,
    write,
)


def test_the_manifest_lists_base_and_confirmed_films_up_to_the_cutoff(world):
    base, storage, tmp_path = world
    data = collect(base, storage, tmp_path)
    manifest = data.manifest

    paths = {e.path for e in manifest.entries}
    assert "confirmed/south/job-late/film.png" not in paths  # confirmed after the cut-off
    assert {"confirmed/north/job-a/film.png", "confirmed/north/job-b/film.png",
            "confirmed/south/job-c/film.png", "train/NORMAL/IM-0115-0001.jpeg"} <= paths
    assert manifest.excluded == {"acceptance_overlap": 0, "after_cutoff": 1}
    assert manifest.cutoff == T0
    assert manifest.counts["images"] == len(data.records) == 10
    assert manifest.counts["source"] == {"base": 7, "confirmed": 3}
    assert manifest.counts["site"] == {"base": 7, "north": 2, "south": 1}
    assert manifest.counts["class"] == {"normal": 4, "bacterial": 2, "viral": 3,
                                        "pneumonia_unknown_subtype": 1}
    assert manifest.counts["source_site_class"]["confirmed/north/viral"] == 1
    entry = next(e for e in manifest.entries if e.path == "confirmed/north/job-a/film.png")
    assert (entry.label, entry.subtype, entry.site) == ("PNEUMONIA", "viral", "north")
    assert entry.sha256 == hashlib.sha256(storage.get(entry.path)).hexdigest()
    # The records are the manifest's files, confirmed films copied out of storage.
    record = next(r for r in data.records if r.relative_path == entry.path)
    assert record.path.read_bytes() == storage.get(entry.path) and record.site == "north"

    later = collect(base, storage, tmp_path, cutoff=T0 + timedelta(days=3)).manifest
    assert later.counts["source"]["confirmed"] == 4
    assert later.fingerprint != manifest.fingerprint


def test_the_fingerprint_names_the_content_not_where_it_sits(world):
    base, storage, tmp_path = world
    first = collect(base, storage, tmp_path).manifest
    moved = shutil.copytree(base, tmp_path / "elsewhere")
    again = collect(moved, storage, tmp_path / "other-work").manifest
    assert again.fingerprint == first.fingerprint
    # A reader changing a label changes the data set, and so its fingerprint.
    confirm(storage, "north", "job-b", "PNEUMONIA", T0 - timedelta(hours=2),
            png_bytes(noise("film-b")), revision=2)
    relabelled = collect(base, storage, tmp_path).manifest
    assert relabelled.fingerprint != first.fingerprint


def test_without_a_storage_or_cutoff_only_the_base_data_set_is_read(world):
    base, storage, tmp_path = world
    manifest = collect(base, None, tmp_path).manifest
    assert manifest.counts["source"] == {"base": 7} and manifest.cutoff is None


def test_a_confirmed_film_of_a_site_acceptance_set_never_trains(world):
    base, storage, tmp_path = world
    acceptance = tmp_path / "acceptance-north"
    # The site's acceptance set holds film-a (re-encoded: same pixels, other bytes) and a film
    # that never reached the confirmed store.
    write(acceptance / "PNEUMONIA" / "a.png", png_bytes(noise("film-a"), compress_level=1))
    write(acceptance / "NORMAL" / "x.png", png_bytes(noise("only-in-acceptance")))

    data = collect(base, storage, tmp_path, site_sets={"north": str(acceptance)})

    paths = {e.path for e in data.manifest.entries}
    assert "confirmed/north/job-a/film.png" not in paths
    assert "confirmed/north/job-b/film.png" in paths
    assert data.manifest.excluded["acceptance_overlap"] == 1
    assert data.manifest.counts["source"]["confirmed"] == 2


def test_films_of_one_patient_stay_on_one_side_and_no_identifier_is_kept(tmp_path):
    base = base_layout(tmp_path / "base")
    storage = LocalStorage(tmp_path / "storage")
    for index in range(6):  # two films of each of three de-identified patients
        confirm(storage, "east", f"job-{index}", "PNEUMONIA" if index % 2 else "NORMAL",
                T0 - timedelta(hours=index + 1), dicom_film(f"d{index}", f"ANON-{index // 2}"),
                kind="dcm")
    data = collect(base, storage, tmp_path)
    confirmed = [r for r in data.records if r.site == "east"]
    units = {r.patient for r in confirmed}
    assert len(units) == 3
    assert not any("ANON" in line for line in data.manifest.to_json().splitlines())
    for seed in range(5):
        rest, held = split_by_patient(data.records, 0.4, seed=seed)
        held_units = {r.patient for r in held}
        assert not held_units & {r.patient for r in rest}
        for unit in units:
            sides = {id(r) in {id(h) for h in held} for r in confirmed if r.patient == unit}
            assert len(sides) == 1


def test_a_manifest_rebuilds_exactly_its_file_set_with_its_labels(world):
    base, storage, tmp_path = world
    original = collect(base, storage, tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text(original.manifest.to_json())
    # Afterwards: a reader relabels a film and another film is confirmed before the cut-off.
    confirm(storage, "north", "job-b", "PNEUMONIA", T0 - timedelta(hours=5),
            png_bytes(noise("film-b")), revision=2)
    confirm(storage, "south", "job-new", "NORMAL", T0 - timedelta(hours=3),
            png_bytes(noise("film-new")))

    rebuilt = rebuild_training_data(DatasetManifest.read(path), base, storage,
                                    tmp_path / "rebuild")

    assert rebuilt.manifest.fingerprint == original.manifest.fingerprint
    before = [(r.relative_path, r.label, r.subtype, r.patient, r.dup_group)
              for r in original.records]
    after = [(r.relative_path, r.label, r.subtype, r.patient, r.dup_group)
             for r in rebuilt.records]
    assert after == before  # job-b still NORMAL, job-new absent
    assert [r.path.read_bytes() for r in rebuilt.records] == [
        r.path.read_bytes() for r in original.records]


def test_a_rebuild_refuses_changed_or_missing_files_and_an_edited_manifest(world):
    base, storage, tmp_path = world
    manifest = collect(base, storage, tmp_path).manifest
    (base / "train" / "NORMAL" / "IM-0115-0001.jpeg").write_bytes(jpeg_bytes(noise("other")))
    storage.delete("confirmed/south/job-c/film.png")
    with pytest.raises(DatasetError) as caught:
        rebuild_training_data(manifest, base, storage, tmp_path / "rebuild")
    message = str(caught.value)
    assert "2 file(s)" in message and "train/NORMAL/IM-0115-0001.jpeg" in message
    assert "confirmed/south/job-c/film.png" in message

    edited = json.loads(manifest.to_json())
    edited["entries"][0]["label"] = "PNEUMONIA" if edited["entries"][0]["label"] == "NORMAL" \
        else "NORMAL"
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(edited))
    with pytest.raises(DatasetError, match="manifest was changed"):
        DatasetManifest.read(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
    ("2026-12-01T03:00:00+01:00", datetime(2026, 12, 1, 2, tzinfo=UTC)),
])
def test_cutoff_parsing(text, expected):
    assert parse_cutoff(text) == expected


def test_a_bad_cutoff_is_a_clear_error():
    with pytest.raises(DatasetError, match="ISO 8601"):
        parse_cutoff("last sunday")


def test_cli_writes_a_manifest_and_rebuilds_it(world, monkeypatch, capsys):
    from services.trainer.settings import get_settings

    base, storage, tmp_path = world
    monkeypatch.setenv("CXR_STORAGE_BACKEND", "local")
    monkeypatch.setenv("CXR_STORAGE_ROOT", str(storage.root))
    get_settings.cache_clear()
    out = tmp_path / "m.json"
    try:
        assert main(["dataset", "--data", str(base), "--cutoff", "2026-11-01T12:00:00Z",
                     "--out", str(out), "--films", str(tmp_path / "f1")]) == 0
        written = json.loads(capsys.readouterr().out)
        assert written["counts"]["source"] == {"base": 7, "confirmed": 3}
        assert out.is_file()
        assert main(["dataset", "--data", str(base), "--manifest", str(out),
                     "--films", str(tmp_path / "f2")]) == 0
        rebuilt = json.loads(capsys.readouterr().out)
        assert rebuilt["rebuilt"] and rebuilt["fingerprint"] == written["fingerprint"]
        assert rebuilt["files"] == 10
        # A missing file is one line on stderr and exit status 2, not a traceback.
        shutil.rmtree(base / "val")
        assert main(["dataset", "--data", str(base), "--manifest", str(out),
                     "--films", str(tmp_path / "f3")]) == 2
        assert "cannot be rebuilt" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
