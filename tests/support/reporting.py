"""Figures that tests report for the end of the run, wherever the test ran (pytest-xdist too)."""

from __future__ import annotations

FAULT_COUNTS = "fault_counts"  # user property: one fault scenario's job counts (a flat dict)


def fault_count_rows(terminalreporter) -> list[dict[str, object]]:
    """The fault scenarios' counts, from the reports of the tests that recorded them."""
    return [value
            for outcome in ("passed", "failed")
            for report in terminalreporter.stats.get(outcome, [])
            if getattr(report, "when", None) == "call"
            for name, value in getattr(report, "user_properties", ())
            if name == FAULT_COUNTS]
