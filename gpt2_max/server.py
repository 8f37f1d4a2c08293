"""Start and stop a real `max serve` on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

SERVE_ENV = {
    "MAX_SERVE_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


METRIC_RECORDING = "MAX_SERVE_METRIC_RECORDING_METHOD"
# The API key's settings (gpt2_lmhead_model/serving/api_key.py).
API_KEY_ENV = "GPT2_MAX_API_KEY"
API_KEY_FILE_ENV = "GPT2_MAX_API_KEY_FILE"


def unread_metrics_off(environ: Mapping[str, str]) -> dict[str, str]:
    """`MAX_SERVE_METRIC_RECORDING_METHOD=NOOP` when nothing could read MAX's
    serving metrics: with telemetry disabled (`SERVE_ENV`) MAX 26.7 serves no
    `/metrics`, yet by default still pickles every step's measurements to a
    process of their own (about 1 ms of CPU per token on 2 cores). A method
    the caller chose, or an OTLP metrics endpoint, is left alone."""
    if METRIC_RECORDING in environ or environ.get("MAX_SERVE_OTLP_METRICS_ENDPOINT"):
        return {}
    return {METRIC_RECORDING: "NOOP"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """An OpenAI-compatible server in its own process group, so nothing
    outlives `stop()`; ready once `GET /health` answers 200."""

    name = "server"

    def __init__(
        self,
        args: Sequence[str],
        model: str,
        port: int,
        *,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
        unset_env: Sequence[str] = (),
        cwd: str | Path | None = None,
    ) -> None:
        self.args = list(args)
        self.model = model
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path) if log_path else None
        self.env = {**os.environ, **SERVE_ENV, **(env or {})}
        for name in unset_env:
            self.env.pop(name, None)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 1800.0) -> ServerProcess:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before "
                    f"it was ready{self._log_tail()}"
                )
            if self.healthy():
                self.startup_seconds = time.monotonic() - started
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"{self.name} not ready after {timeout:.0f}s{self._log_tail()}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP to every process of the server: a benchmark measuring
        something else meanwhile gets the CPU an idle server would poll."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, grace: float = 30.0) -> None:
        """SIGINT (a clean shutdown), then SIGKILL for whatever is left."""
        self.resume()  # a paused server cannot act on SIGINT
        if self.process is not None:
            stop_group(self.process, signal.SIGINT, grace)

    def _log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(tail)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MaxServe(ServerProcess):
    """`max serve` with this project's architecture on a free loopback port."""

    name = "max serve"

    def __init__(
        self,
        model_path: str | Path,
        extra_args: Sequence[str] = (),
        *,
        log_path: str | Path | None = None,
        custom_architectures: str = "gpt2_lmhead_model",
        env: dict[str, str] | None = None,
        unset_env: Sequence[str] = (),
        cwd: str | Path | None = None,
        max_executable: str = "max",
        api_key: str | None = None,
    ) -> None:
        """`api_key`: the key the server requires (`GPT2_MAX_API_KEY`, passed
        in its environment, never on its command line); None: no key."""
        port = free_port()
        arch = ["--custom-architectures", custom_architectures]
        args = [
            max_executable, "serve",
            "--model-path", str(model_path),
            "--host", "127.0.0.1",
            "--port", str(port),
            *(arch if custom_architectures else []),
            *extra_args,
        ]  # fmt: skip
        env = dict(env or {})
        env.update(unread_metrics_off({**os.environ, **env}))
        if api_key is not None:
            env[API_KEY_ENV] = api_key
        # A key in this process's environment is not the test's or the
        # benchmark's: the server gets the one asked for, or none.
        keys = (API_KEY_ENV, API_KEY_FILE_ENV)
        unset_env = [*unset_env, *(name for name in keys if name not in env)]
        self.api_key = api_key
        super().__init__(
            args,
            str(model_path),
            port,
            log_path=log_path,
            env=env,
            unset_env=unset_env,
            cwd=cwd,
        )

    @property
    def headers(self) -> dict[str, str]:
        """The headers a request needs to be let in."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def group_pids(pgid: int) -> list[int]:
    """The processes of the group still running (not zombies)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def stop_group(
    process: subprocess.Popen[bytes], first: signal.Signals, grace: float
) -> None:
    """`first` to the process group `process` leads, then SIGKILL to
    whatever is left after `grace` seconds."""
    pgid = process.pid
    for sig, wait in ((first, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pgid):
            process.poll()
            time.sleep(0.1)
        if not group_alive(pgid):
            break
    process.wait(timeout=10)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (not a zombie)."""
    return bool(group_pids(pgid))
