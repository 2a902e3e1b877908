"""Reliability tests: the fault scenarios report their job counts, printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

_FAULT_COUNTS: list[dict[str, object]] = []


@pytest.fixture
def fault_report() -> Callable[[dict[str, object]], None]:
    """Record one scenario's counts (a flat dict) for the summary at the end of the run."""
    return _FAULT_COUNTS.append


def pytest_terminal_summary(terminalreporter) -> None:
    if not _FAULT_COUNTS:
        return
    terminalreporter.section("fault scenarios: job counts")
    for row in _FAULT_COUNTS:
        terminalreporter.write_line("  ".join(f"{key}={value}" for key, value in row.items()))
