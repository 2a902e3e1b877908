"""Fixtures for tests that need the worker (filled in by that area)."""
