"""`gpu/check`: join the carried parts, install MAX with no registry, and
run the checks one bounded step at a time.

Runs under the machine's own Python (standard library only here: nothing
is installed yet). Each step is a subprocess of `gpu/steps.py` with its own
time limit, so one that hangs or fails costs only its own slot; the JSON is
rewritten after every step, so what ran survives a kill. Everything goes to
`$OUT` (or `--out`): `gpu-check.json` and `gpu-check.log`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from payload import MANIFEST, PayloadError, join_parts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LANDED = REPO / ".gpu-landed"

# (step, shape role, seconds): in priority order, as the budget allows.
GPU_PLAN = [
    ("env", None, 60),
    ("checkpoint", "small", 90),
    ("verify", "small", 150),
    ("serve_battery", "small", 180),
    ("parity_bf16", "small", 120),
    ("checkpoint", "large", 150),
    ("serve_speed", "large", 200),
    ("verify", "large", 180),
    ("parity_bf16", "large", 150),
    ("peer", "large", 120),
]
SHAPES = {
    "gpu": {"small": "distilgpt2", "large": "gpt2-xl"},
    "cpu": {"small": "variant", "large": "variant"},  # each step once, tiny
}


class Run:
    """The log, the JSON record and the time left."""

    def __init__(self, out: Path, budget: float, meta: dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / "gpu-check.json"
        self.log = (out / "gpu-check.log").open("a", buffering=1)
        self.deadline = time.monotonic() + budget
        self.record: dict[str, Any] = {**meta, "steps": []}

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        self.log.write(f"[{stamp}] {line}\n")
        print(f"[{stamp}] {line}", flush=True)

    def add(self, step: dict[str, Any]) -> None:
        self.record["steps"].append(step)
        counts: dict[str, int] = {}
        for s in self.record["steps"]:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        self.record["summary"] = counts
        self.json_path.write_text(json.dumps(self.record, indent=2) + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()


def install(run: Run, tag: str, scratch: Path) -> Path:
    """Joins the parts (landed or carried) and installs them into a scratch
    directory with pip, offline."""
    dirs = [LANDED, REPO / ".gpu-payload" / tag]
    manifest = next((d / MANIFEST for d in dirs if (d / MANIFEST).is_file()), None)
    if manifest is None:
        raise PayloadError(f"no {MANIFEST} in {' or '.join(map(str, dirs))}")
    wheels = join_parts(manifest, dirs, scratch / "wheels")
    site = scratch / "site"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
            "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
            "--target", str(site), *map(str, wheels),
        ],
        check=True, stdout=run.log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    run.say(f"installed {len(wheels)} wheels into {site}")
    return site


def step_env(site: Path, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env["PATH"] = os.pathsep.join([str(site / "bin"), env.get("PATH", "")])
    env["GPUKIT_SITE"] = str(site)
    env["GPUKIT_SCRATCH"] = str(scratch)
    env.update(
        MAX_SERVE_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def kill_group(pgid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def run_step(
    run: Run, env: dict[str, str], scratch: Path, argv: list[str], limit: float
) -> dict:
    """One step in its own process group; servers it started are listed
    under scratch/servers and stopped after it, whatever happened."""
    result_path = scratch / "step-result.json"
    result_path.unlink(missing_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "steps.py"), *argv, "--result", str(result_path)],
        env=env, stdout=run.log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        code = None
        kill_group(process.pid)
        process.wait()
    for pid_file in (scratch / "servers").glob("*"):
        kill_group(int(pid_file.name))
        pid_file.unlink()
    seconds = round(time.monotonic() - started, 1)
    step: dict[str, Any] = {"name": " ".join(argv), "seconds": seconds}
    if result_path.is_file():
        step.update(json.loads(result_path.read_text()))
    if code is None:
        step["status"], step["error"] = "timeout", f"stopped after {limit:.0f}s"
    elif "status" not in step:
        step["status"], step["error"] = "error", f"exit {code}, no result (see the log)"
    return step


def main() -> int:
    parser = argparse.ArgumentParser(prog="gpu/check", description=__doc__)
    parser.add_argument("--devices", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--budget", type=float, help="seconds for all steps (gpu 420)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/gpukit"))
    parser.add_argument("--site", type=Path, help="an installed stack: skip the join")
    parser.add_argument("--steps", help="only these steps, comma-separated (a rerun)")
    args = parser.parse_args()
    out = args.out or REPO / ".gpu-payload" / "out"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    budget = args.budget or (420.0 if args.devices == "gpu" else 2400.0)
    run = Run(out, budget, {"devices": args.devices, "python": sys.version.split()[0]})
    shapes = SHAPES[args.devices]
    run.say(f"gpu/check --devices {args.devices}, {budget:.0f}s for the steps")
    args.scratch.mkdir(parents=True, exist_ok=True)
    (args.scratch / "servers").mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        site = args.site or install(run, tag, args.scratch)
    except (PayloadError, subprocess.CalledProcessError, OSError) as error:
        run.add({"name": "install", "status": "error", "error": str(error)})
        run.say(f"install failed: {error}")
        return 1
    run.add(
        {
            "name": "install",
            "status": "pass",
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    env = step_env(site, args.scratch)
    chosen = set(args.steps.split(",")) if args.steps else {n for n, _, _ in GPU_PLAN}
    done: set[tuple[str, str | None]] = set()
    for name, role, limit in GPU_PLAN:
        shape = shapes[role] if role else None
        if name not in chosen or (name, shape) in done:
            continue
        done.add((name, shape))
        argv = [name, "--devices", args.devices]
        if shape is not None:
            argv += ["--shape", shape]
        if run.left() < 30:
            run.add(
                {"name": " ".join(argv), "status": "skipped", "error": "out of time"}
            )
            continue
        limit = min(limit if args.devices == "gpu" else 4 * limit, run.left())
        run.say(f"step {' '.join(argv)} (limit {limit:.0f}s)")
        step = run_step(run, env, args.scratch, argv, limit)
        run.say(f"  -> {step['status']} in {step['seconds']}s {step.get('error', '')}")
        run.add(step)
    run.say(f"summary {run.record['summary']}; JSON {run.json_path}")
    return 0 if set(run.record["summary"]) <= {"pass"} else 1


if __name__ == "__main__":
    sys.exit(main())
