"""Peers live in virtual environments of their own, never in the project's.

Each is created on first use under `artifacts/peers/<name>` and reused while
its requirements stay the same. A peer that cannot be installed is reported
as skipped, with the reason: the benchmark never fails for a peer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PEERS_DIR = Path("artifacts/peers")


class PeerUnavailable(Exception):
    """The peer could not be installed or started; the message says why."""


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a peer's processes.

    MAX's runtime sets `PYTHONEXECUTABLE` in this process when it loads; a
    child interpreter that inherits it believes it is our venv's python
    and installs or imports from there.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONEXECUTABLE"}
    env.pop("PYTHONPATH", None)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return {**env, **(extra or {})}


def base_python() -> str:
    """An interpreter outside any venv, to create the peer's venv from."""
    return (
        getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
    )


def ensure(
    name: str,
    requirements: Sequence[str],
    *,
    remove: Sequence[str] = (),
    env: dict[str, str] | None = None,
    root: Path = PEERS_DIR,
    timeout: float = 3600,
) -> Path:
    """The python of venv `name` with `requirements` installed (and the
    packages in `remove` uninstalled after). Raises `PeerUnavailable`."""
    venv = (root / name).resolve()
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirements"
    wanted = "\n".join([*requirements, *(f"-{r}" for r in remove)])
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{name}-install.log"
    steps = [
        [base_python(), "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", *requirements],
    ]
    if remove:
        steps.append([str(python), "-m", "pip", "uninstall", "-y", *remove])
    print(f"[{name}] installing {' '.join(requirements)} (log: {log})", flush=True)
    with open(log, "w") as out:
        for step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            try:
                done = subprocess.run(
                    step,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=peer_env(env),
                    timeout=timeout,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                raise PeerUnavailable(f"{' '.join(step[:4])}: {e}") from e
            if done.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise PeerUnavailable(
                    f"`{' '.join(step[2:5])}` failed ({done.returncode}): "
                    + " / ".join(tail)
                )
    stamp.write_text(wanted)
    return python
