"""MAX's CPU runtime workers yield to the Python threads (`runtime_threads`)."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import pytest

from gpt2_lmhead_model.runtime_threads import (
    NICE_VARIABLE,
    WORKER_NAME_PREFIX,
    WORKER_NICE,
    SettingError,
    runtime_worker_threads,
    worker_nice,
    yield_to_python_threads,
)

PR_SET_NAME = 15


class NamedThread:
    """A thread that names itself (its `comm`) and waits to be released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = threading.Event()
        self.release = threading.Event()
        self.tid = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NAME, self.name.encode(), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")
        self.tid = threading.get_native_id()
        self.ready.set()
        self.release.wait()

    def __enter__(self) -> NamedThread:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join()


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_finds_threads_by_the_runtime_name(tmp_path: Path):
    for tid, name in [
        (11, "🔥 Thread0"),
        (12, "🔥 Thread1"),
        (13, "python"),
        (14, "Thread-1"),
    ]:
        (tmp_path / str(tid)).mkdir()
        (tmp_path / str(tid) / "comm").write_text(name + "\n", encoding="utf-8")
    (tmp_path / "15").mkdir()  # ended before its name was read
    assert runtime_worker_threads(tmp_path) == [11, 12]


def test_lowers_only_runtime_workers(monkeypatch):
    monkeypatch.delenv(NICE_VARIABLE, raising=False)
    with (
        NamedThread(WORKER_NAME_PREFIX + "7") as worker,
        NamedThread("helper") as other,
    ):
        assert nice_of(worker.tid) < WORKER_NICE
        changed = yield_to_python_threads(worker_nice())
        assert worker.tid in changed
        assert nice_of(worker.tid) == WORKER_NICE
        assert nice_of(other.tid) == nice_of(threading.get_native_id()) < WORKER_NICE


def test_never_raises_a_priority(monkeypatch):
    monkeypatch.setenv(NICE_VARIABLE, "5")
    with NamedThread(WORKER_NAME_PREFIX + "8") as worker:
        os.setpriority(os.PRIO_PROCESS, worker.tid, 12)
        assert worker.tid not in yield_to_python_threads(worker_nice())
        assert nice_of(worker.tid) == 12


def test_zero_keeps_max_default(monkeypatch):
    monkeypatch.setenv(NICE_VARIABLE, "0")
    with NamedThread(WORKER_NAME_PREFIX + "9") as worker:
        before = nice_of(worker.tid)
        yield_to_python_threads(worker_nice())
        assert nice_of(worker.tid) == before


@pytest.mark.parametrize("value", ["high", "20", "-1", ""])
def test_bad_setting_is_named(monkeypatch, value):
    monkeypatch.setenv(NICE_VARIABLE, value)
    with pytest.raises(SettingError, match=NICE_VARIABLE):
        worker_nice()
