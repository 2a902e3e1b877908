"""The peak resident memory of a process under test (its children included), sampled in a thread."""

from __future__ import annotations

import threading
import time

import psutil


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in (process, *process.children(recursive=True)):
        try:
            total += member.memory_info().rss
        except psutil.Error:  # a child that just exited
            continue
    return total


class PeakRss:
    """`with PeakRss(pid) as peak: ...`; then `peak.growth_mb`: the highest RSS seen while the
    block ran, less the RSS just before it, in MiB."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.baseline = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self._process))
            time.sleep(self._interval)

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = tree_rss(self._process)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self._process))

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20
