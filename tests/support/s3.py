"""Fixtures for tests that need the s3 (filled in by that area)."""
