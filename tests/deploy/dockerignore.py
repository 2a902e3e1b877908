"""Whether a path is left out of the Docker build context by the root .dockerignore."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import PurePosixPath

from tests.support.procs import REPO_ROOT


def ignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(relative_path: str, patterns: list[str]) -> bool:
    """True when the path or a folder above it matches a pattern (no `!` exceptions used here)."""
    path = PurePosixPath(relative_path.rstrip("/"))
    candidates = [path, *path.parents][:-1]  # drop the "." parent
    for pattern in patterns:
        if pattern.startswith("!"):
            raise ValueError("negated .dockerignore patterns are not handled by this check")
        anywhere = pattern.removeprefix("**/")
        for candidate in candidates:
            if fnmatch(str(candidate), pattern) or (
                pattern.startswith("**/") and fnmatch(candidate.name, anywhere)
            ):
                return True
    return False
