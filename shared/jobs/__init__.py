"""A prediction job's life cycle: its record (`records`), where it is kept (`store`), the names of
everything stored for it (`keys`), the queues and tasks that move it (`queue`) and the one path
that creates it (`intake`); `view` is the job as its client sees it.

`JobStore` is also importable from here.
"""

from shared.jobs.store import JobStore

__all__ = ["JobStore"]
