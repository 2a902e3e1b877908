import numpy as np
import pytest

from scripts.subtype_shortcut import subtype_auroc_by_group


def test_subtype_auroc_by_group_ranks_within_each_group_only():
    subtypes = ["bacterial", "viral", "bacterial", "viral", "viral", None]
    groups = ["a", "a", "b", "b", "c", "a"]
    # Across groups the viral films would rank well; within "b" the bacterial film ranks higher.
    probs = np.array([
        [0.0, 0.9, 0.1],  # a, bacterial, share 0.1
        [0.0, 0.2, 0.8],  # a, viral, share 0.8
        [0.0, 0.3, 0.7],  # b, bacterial, share 0.7
        [0.0, 0.4, 0.6],  # b, viral, share 0.6
        [0.0, 0.5, 0.5],  # c, viral only
        [0.9, 0.05, 0.05],  # unknown subtype: not counted
    ])
    table = subtype_auroc_by_group(subtypes, probs, groups)
    assert set(table) == {"a", "b", "c"}
    assert table["a"]["auroc"] == pytest.approx(1.0)
    assert table["b"]["auroc"] == pytest.approx(0.0)
    assert (table["a"]["n"], table["a"]["n_viral"]) == (2, 1)
    assert table["c"] == {"n": 1, "n_viral": 1, "auroc": None, "auroc_ci": None}
