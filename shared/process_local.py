"""A value built once per process: clients that must not cross a fork (gRPC channels, Redis
connection pools) are rebuilt by each Celery pool process instead of inherited from the parent."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`get()` builds the value with `factory` on first use in each process and keeps it."""

    def __init__(self, factory: Callable[[], T], close: Callable[[T], None] | None = None) -> None:
        self._factory = factory
        self._close = close
        self._held: tuple[int, T] | None = None

    def get(self) -> T:
        if self._held is None or self._held[0] != os.getpid():
            self._held = (os.getpid(), self._factory())
        return self._held[1]

    def reset(self) -> None:
        """Forget the value; close it first when this process built it (a copy inherited from
        the parent is only dropped: its connections belong to the parent)."""
        held, self._held = self._held, None
        if held is not None and held[0] == os.getpid() and self._close is not None:
            self._close(held[1])
