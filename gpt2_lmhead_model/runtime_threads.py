"""Lets the Python thread that drives a CPU model run before MAX's spinning
runtime threads.

MAX 26.7.0's CPU runtime keeps one worker thread per core (named
`🔥 Thread0`, `🔥 Thread1`, ...) and, once a graph has run, those threads
busy-wait for work nearly all the time, between steps as well as between
kernels. Everything else the process does between two graph runs (MAX's
scheduler, batch preparation, the sampler's call, ZMQ) is Python on the
main thread, and it competes with them for the cores. When the main thread
wakes on a core where a worker spins, the kernel's scheduler can leave it
waiting for a whole tick (what that costs `max serve`: `./run bench
--ablations`, docs/BENCHMARKS.md).

Lowering the workers' priority lets any thread with work run first; a
worker that has work still gets the cores the others leave. Under Linux's
autogroups (one per session) or in a cgroup of its own, the priority only
counts against the other threads of that session or cgroup.
`GPT2_MAX_WORKER_NICE=0` keeps MAX's default.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

WORKER_NAME_PREFIX = "🔥 Thread"
"""How MAX 26.7.0 names its CPU runtime's worker threads."""
WORKER_NICE = 19
"""Measured against 10 and 0 in docs/BENCHMARKS.md."""
NICE_VARIABLE = "GPT2_MAX_WORKER_NICE"

logger = logging.getLogger(__name__)


class SettingError(ValueError):
    """`GPT2_MAX_WORKER_NICE` holds something other than a nice level."""


def runtime_worker_threads(tasks: Path = Path("/proc/self/task")) -> list[int]:
    """Thread ids of MAX's CPU runtime workers in this process (none where
    there is no `/proc`)."""
    found = []
    for task in tasks.glob("*"):
        try:
            name = (task / "comm").read_text(encoding="utf-8", errors="replace")
        except OSError:  # the thread ended meanwhile
            continue
        if name.startswith(WORKER_NAME_PREFIX):
            found.append(int(task.name))
    return sorted(found)


def worker_nice() -> int:
    """The nice level `GPT2_MAX_WORKER_NICE` asks for (`WORKER_NICE` unset)."""
    value = os.environ.get(NICE_VARIABLE, str(WORKER_NICE))
    try:
        nice = int(value)
    except ValueError:
        nice = -1
    if not 0 <= nice <= 19:
        raise SettingError(
            f"{NICE_VARIABLE}={value!r} is not a nice level from 0 to 19"
        )
    return nice


def yield_to_python_threads(nice: int) -> list[int]:
    """Lowers the priority of MAX's CPU runtime workers to `nice` (never
    raises it); returns the threads changed."""
    changed = []
    for tid in runtime_worker_threads():
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed.append(tid)
        except OSError as e:  # the thread ended, or a sandbox forbids it
            logger.debug("runtime thread %d keeps its priority: %s", tid, e)
    return changed
