"""Test-wide fixtures: each real service a test needs is started by a fixture in tests/support/."""

pytest_plugins = [
    "tests.support.redis",
    "tests.support.s3",
    "tests.support.model_server",
    "tests.support.worker",
    "tests.support.mlflow",
    "tests.support.gateway",
    "tests.support.webhook_receiver",
]


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.support.reporting import fault_count_rows

    rows = fault_count_rows(terminalreporter)
    if rows:
        terminalreporter.section("fault scenarios: job counts")
        for row in rows:
            terminalreporter.write_line("  ".join(f"{key}={value}" for key, value in row.items()))


def pytest_collection_modifyitems(items) -> None:
    """Files with `slow` tests first (order kept otherwise): run in parallel one file per
    process, the long files start early instead of one of them finishing alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
