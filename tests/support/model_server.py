"""Fixtures for tests that need the model_server (filled in by that area)."""
