"""Exploration: every figure and the summary of the repo's sample, the CLI, the sample itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from services.trainer.cli.main import build_parser, main
from services.trainer.data.dataset import scan_dataset
from services.trainer.explore.summary import class_name, explore
from tests.support.procs import REPO_ROOT
from tests.trainer.dataset_layouts import kaggle_flat_layout

SAMPLE = REPO_ROOT / "data" / "sample"
FIGURES = ("sample_grid", "intensity_histograms", "class_distribution", "image_sizes_box",
           "image_sizes_violin", "patients_per_class", "images_per_patient")


@pytest.fixture(scope="module")
def sample_exploration(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("explore")
    return out, explore(SAMPLE, out, samples_per_class=4)


def test_every_figure_is_a_png_that_pillow_opens(sample_exploration: tuple[Path, dict]) -> None:
    out, summary = sample_exploration
    assert summary["figures"] == {name: f"{name}.png" for name in FIGURES}
    for name in FIGURES:
        path = out / f"{name}.png"
        assert path.stat().st_size > 5_000, name
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 200, name


def test_summary_counts_match_the_sample(sample_exploration: tuple[Path, dict]) -> None:
    out, summary = sample_exploration
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["images"] == 40
    assert summary["by_class"] == {"normal": 20, "bacterial": 10, "viral": 10}
    assert summary["by_label"] == {"NORMAL": 20, "PNEUMONIA": 20}
    assert summary["by_split"] == {"all": {"normal": 20, "bacterial": 10, "viral": 10,
                                           "NORMAL": 20, "PNEUMONIA": 20}}
    assert summary["patients"]["total"] == 35
    assert summary["patients"]["by_class"] == {"normal": 19, "bacterial": 7, "viral": 9}
    assert summary["patients"]["images_per_patient"]["max"] == 2
    assert summary["duplicate_groups"]["groups"] == 3
    assert summary["duplicate_groups"]["members"]["PNEUMONIA/person124_virus_246.jpeg"] == [
        "PNEUMONIA/person124_virus_246.jpeg", "PNEUMONIA/person124_virus_247.jpeg"]
    assert summary["image_size"]["width"] == {"min": 224, "median": 224, "mean": 224, "max": 224}
    markdown = (out / "summary.md").read_text()
    assert "| all | 20 | 10 | 10 | 20 | 20 |" in markdown
    assert "3 groups holding 6 images" in markdown


def test_sizes_are_the_original_decoded_sizes_and_unknown_subtypes_are_a_class(
        tmp_path: Path) -> None:
    summary = explore(kaggle_flat_layout(tmp_path / "data"), tmp_path / "out", samples_per_class=2)
    assert summary["image_size"]["width"] == {"min": 64, "median": 90, "mean": 94, "max": 140}
    assert summary["image_size"]["height"] == {"min": 64, "median": 96, "mean": 90, "max": 120}
    assert summary["by_class"] == {"normal": 2, "bacterial": 1, "viral": 1, "pneumonia_unknown": 1}
    assert summary["patients"]["by_class"]["bacterial"] == 1
    assert summary["patients"]["total"] == 4
    assert all((tmp_path / "out" / f"{name}.png").stat().st_size > 0 for name in FIGURES)


def test_cli_explore_writes_the_report_without_loading_tensorflow(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from services.trainer.cli.main import main\n"
        f"code = main(['explore', '--data', {str(SAMPLE)!r}, '--out', {str(tmp_path)!r}])\n"
        "assert 'tensorflow' not in sys.modules, 'explore imported TensorFlow'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "40 images, 35 patients, 3 duplicate groups" in done.stdout
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == 40


def test_cli_reports_a_bad_data_folder_in_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_refuses_a_sample_grid_without_images(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["explore", "--data", str(SAMPLE), "--out", str(tmp_path), "--samples-per-class", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_data_defaults_to_the_data_dir_setting(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from services.trainer.settings import get_settings

    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "elsewhere"))
    get_settings.cache_clear()
    try:
        args = build_parser().parse_args(["explore"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert args.data == tmp_path / "elsewhere"


def test_the_sample_holds_what_its_readme_says() -> None:
    readme = (SAMPLE / "README.md").read_text()
    rows = re.findall(r"^\| (normal|bacterial|viral) \| .*? \| (\d+) \| (\d+) \|$", readme,
                      flags=re.MULTILINE)
    table = {cls: (int(images), int(patients)) for cls, images, patients in rows}
    records = scan_dataset(SAMPLE)
    images = Counter(class_name(r) for r in records)
    patients: dict[str, set[str]] = defaultdict(set)
    for record in records:
        patients[class_name(record)].add(record.patient)
    assert table == {cls: (images[cls], len(patients[cls])) for cls in images}
    assert sum(n for n, _ in table.values()) == len(records) == 40
    assert "CC BY 4.0" in readme and "10.17632/rscbjbr9sj.2" in readme
    two_images = sorted(p for p, n in Counter(r.patient for r in records).items() if n == 2)
    assert all(f"`{patient}`" in readme for patient in two_images)
    assert len({r.dup_group for r in records if r.dup_group}) == 3
