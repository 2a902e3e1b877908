"""The model card's markdown: operating point, metrics beside the baseline, gate, parameters."""

from __future__ import annotations

from services.trainer.evaluation.model_card import metrics_table, render_model_card

VALIDATION = {"n": 120, "auroc": 0.91234, "auroc_ci": [0.88, 0.94], "sensitivity": 0.95,
              "specificity": 0.8, "ece": None}
BASELINE = {"n": 120, "auroc": 0.8}


def _table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_metrics_sit_beside_the_baseline_with_n_a_for_what_is_missing():
    rows = _table_rows(metrics_table({"CNN": VALIDATION, "HOG baseline": BASELINE}))
    assert rows["metric"] == ["CNN", "HOG baseline"]
    assert rows["n"] == ["120", "120"]
    assert rows["auroc"] == ["0.9123", "0.8000"]
    assert rows["auroc_ci"] == ["[0.8800, 0.9400]", "n/a"]
    assert rows["ece"] == ["n/a", "n/a"]


def test_a_missing_baseline_leaves_one_column():
    rows = _table_rows(metrics_table({"CNN": VALIDATION, "HOG baseline": None}))
    assert rows["metric"] == ["CNN"] and rows["sensitivity"] == ["0.9500"]


def test_the_card_names_the_version_operating_point_gate_and_parameters():
    card = render_model_card(
        model_name="cxr-pneumonia", threshold=0.123456, temperature=1.5,
        params={"epochs": 3, "data_fingerprint": "abc123"}, validation=VALIDATION,
        baseline=BASELINE, git_commit="deadbeef", version=7,
        gate={"passed": True, "min_sensitivity": 0.9})
    assert card.splitlines()[0] == "# Model card: cxr-pneumonia version 7"
    assert "**0.1235**" in card and "T = 1.5000" in card
    assert "`abc123`" in card and "`deadbeef`" in card
    assert "## Promotion gate\n- passed: True\n- min_sensitivity: 0.9000" in card
    assert "- data_fingerprint: `abc123`\n- epochs: `3`" in card  # sorted by name


def test_without_a_version_or_gate_the_card_says_neither():
    card = render_model_card(model_name="cxr-pneumonia", threshold=0.5, temperature=1.0,
                             params={}, validation=VALIDATION)
    assert card.splitlines()[0] == "# Model card: cxr-pneumonia"
    assert "## Promotion gate" not in card
    assert "Data fingerprint: `unknown`; code commit: `unknown`." in card
    assert _table_rows(card)["metric"] == ["CNN"]
