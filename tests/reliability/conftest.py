"""Reliability tests: the fault scenarios report their job counts, printed at the end of the run
(by `pytest_terminal_summary` in tests/conftest.py, which the parallel runner's main process loads).

The counts travel as a user property of the test's report, so they reach the summary from the
process that ran the test whether or not the suite runs in parallel (pytest-xdist).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.reporting import FAULT_COUNTS


@pytest.fixture
def fault_report(record_property) -> Callable[[dict[str, object]], None]:
    """Record one scenario's counts (a flat dict) for the summary at the end of the run."""
    return lambda counts: record_property(FAULT_COUNTS, dict(counts))
