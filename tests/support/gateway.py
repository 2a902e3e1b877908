"""Fixtures for tests that need the gateway (filled in by that area)."""
