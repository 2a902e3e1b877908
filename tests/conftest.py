"""Test-wide fixtures: each real service a test needs is started by a fixture in tests/support/."""

pytest_plugins = [
    "tests.support.redis",
    "tests.support.s3",
    "tests.support.model_server",
    "tests.support.worker",
    "tests.support.mlflow",
    "tests.support.gateway",
]
