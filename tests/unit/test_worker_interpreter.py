"""Processes MAX spawns run on the interpreter that spawned them.

MAX's runtime points `PYTHONEXECUTABLE` at the first `python3` on `PATH`;
when that is not the virtual environment's, a spawned worker used to start
as another interpreter (see `gpt2_lmhead_model/worker_interpreter.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, multiprocessing, sys

def identity(queue):
    import gpt2_lmhead_model
    queue.put([sys.executable, sys.prefix, gpt2_lmhead_model.__file__])

if __name__ == "__main__":
    import gpt2_lmhead_model
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=identity, args=(queue,))
    child.start()
    spawned = queue.get(timeout=300)
    child.join()
    parent = [sys.executable, sys.prefix, gpt2_lmhead_model.__file__]
    print(json.dumps({"parent": parent, "spawned": spawned}))
"""


def path_without_this_environment() -> str:
    """PATH as a service manager would have it: this interpreter's bin
    directory (and so its `python3`) not on it."""
    own = Path(sys.executable).parent
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    keep = [p for p in keep if Path(p).resolve() != own.resolve()]
    return os.pathsep.join([*keep, "/usr/local/bin", "/usr/bin", "/bin"])


def test_spawned_process_is_this_interpreter(tmp_path):
    script = tmp_path / "spawn_identity.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PATH": path_without_this_environment()},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["spawned"] == seen["parent"]
