"""PerProcess: one value per process; a forked child builds its own, never closes the parent's."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass

from shared.process_local import PerProcess


@dataclass
class Client:
    pid: int


def test_one_value_per_process_closed_only_where_it_was_built():
    closed: list[int] = []
    holder = PerProcess(lambda: Client(os.getpid()), close=lambda c: closed.append(c.pid))
    parent = holder.get()
    assert holder.get() is parent

    fork = multiprocessing.get_context("fork")
    results = fork.SimpleQueue()

    def child() -> None:
        holder.reset()  # the parent's copy: dropped, not closed
        closed_after_reset = list(closed)
        own = holder.get()
        holder.reset()  # its own: closed
        results.put((own.pid, closed_after_reset, list(closed)))

    process = fork.Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == 0
    own_pid, closed_after_reset, closed_at_end = results.get()
    assert own_pid == process.pid != os.getpid()
    assert closed_after_reset == [] and closed_at_end == [process.pid]

    assert holder.get() is parent and closed == []
    holder.reset()
    assert closed == [os.getpid()]
    assert holder.get() is not parent


def test_without_a_close_function_reset_only_forgets():
    built: list[Client] = []
    holder = PerProcess(lambda: built.append(Client(os.getpid())) or built[-1])
    first = holder.get()
    holder.reset()
    assert holder.get() is not first and len(built) == 2
