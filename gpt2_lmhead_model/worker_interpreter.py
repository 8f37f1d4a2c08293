"""Keeps MAX's spawned processes on the interpreter that spawned them.

MAX 26.7's native runtime, when loaded, sets `PYTHONEXECUTABLE` in the
process environment (with C `setenv`, so `os.environ` does not show it) to
the first `python3` on `PATH`. `max serve` starts its model worker with
multiprocessing's `spawn`, and Python takes `sys.executable`, hence
`sys.prefix`, from that variable. Unless the virtual environment's `bin` is
first on `PATH` (a service manager, a container entry point, `.venv/bin/max`
called by path), the worker therefore starts as the base interpreter: the
environment's `site-packages` is no longer a site directory, its `.pth` files
are not run, and an editable install's import finder is missing, so the
worker cannot import this package (`ModuleNotFoundError: gpt2_lmhead_model`).
From the repository root the working directory, which MAX also puts on the
worker's path, hid this.
"""

from __future__ import annotations

import ctypes
import os
import sys

VARIABLE = "PYTHONEXECUTABLE"


def process_env(name: str) -> str | None:
    """`name` in the C environment, which `os.environ` (a copy taken at
    start-up) does not see when native code changed it."""
    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    getenv.argtypes = [ctypes.c_char_p]
    value = getenv(os.fsencode(name))
    return None if value is None else os.fsdecode(value)


def spawn_workers_on_this_interpreter() -> None:
    """Points `PYTHONEXECUTABLE` back at this interpreter when something
    (MAX's runtime) set it to another one; otherwise leaves it alone."""
    current = process_env(VARIABLE)
    if current is not None and sys.executable and current != sys.executable:
        os.environ[VARIABLE] = sys.executable
