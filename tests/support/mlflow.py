"""Fixtures for tests that need the mlflow (filled in by that area)."""
