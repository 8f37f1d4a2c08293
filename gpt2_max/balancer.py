"""HAProxy in front of `max serve` replicas, run from `deploy/haproxy.cfg`.

The failover test runs the shipped configuration itself: addresses come in
through the environment, and draining goes through HAProxy's runtime API
(its admin socket), as an operator or a rollout script would do it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .server import free_port, stop_group

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"
BACKEND = "replicas"


class HAProxy:
    """`haproxy` on a free loopback port in its own process group, with
    `deploy/haproxy.cfg`; servers named r1, r2, ... in replica order."""

    def __init__(
        self,
        replicas: Sequence[str],
        workdir: Path,
        *,
        config: Path = CONFIG,
        executable: str = "haproxy",
    ) -> None:
        if len(replicas) != 2:
            raise ValueError(
                f"deploy/haproxy.cfg names 2 replicas (r1, r2), got {len(replicas)}"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = workdir / "haproxy-admin.sock"
        self.log_path = workdir / "haproxy.log"
        self.args = [executable, "-db", "-f", str(config)]
        self.env = {
            **os.environ,
            "GPT2_LB_BIND": f"127.0.0.1:{self.port}",
            "GPT2_LB_ADMIN": str(self.admin),
            **{f"GPT2_REPLICA_{n}": r for n, r in enumerate(replicas, start=1)},
        }
        self.servers = [f"r{n}" for n in range(1, len(replicas) + 1)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> HAProxy:
        """Start, then wait until every replica passes its health check."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"haproxy exited with {self.process.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            if self.admin.exists() and all(
                self.status(s) == "UP" for s in self.servers
            ):
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"haproxy: replicas not all UP after {timeout:.0f}s")

    def command(self, line: str) -> str:
        """One runtime-API command over the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self, server: str) -> dict[str, str]:
        """The `show stat` row of one server of the backend."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == BACKEND and row.get("svname") == server:
                return row
        raise KeyError(f"haproxy has no server {server!r} in {BACKEND!r}")

    def status(self, server: str) -> str:
        """UP, DOWN, DRAIN, MAINT, ... (the first word of `status`)."""
        return self.stats(server)["status"].split()[0]

    def open_requests(self, server: str) -> int:
        """Requests the server holds now (`scur`, current sessions)."""
        return int(self.stats(server)["scur"])

    def drain(self, server: str, timeout: float = 120.0) -> float:
        """Send no new request to `server`, then wait until it holds none;
        the seconds that took. Its open requests finish where they are."""
        started = time.monotonic()
        self.command(f"set server {BACKEND}/{server} state drain")
        while self.open_requests(server) > 0:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{server} still busy after {timeout:.0f}s")
            time.sleep(0.1)
        return time.monotonic() - started

    def enable(self, server: str) -> None:
        """Back in rotation (it still has to pass its health check)."""
        self.command(f"set server {BACKEND}/{server} state ready")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, signal.SIGTERM, 10.0)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
