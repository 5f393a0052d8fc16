"""The state of run directories at a glance (the `pretrain runs status` command reads this).

A run directory is recognised by any of status.json, recipe.yaml, config.yaml or a slurm/ job
record; a directory that is none of these is searched one level down (a sweep root). Reads only
files the trainer and the launcher write, plus one `squeue` call when Slurm is reachable.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

from pretrain.run_dir import read_metrics, read_status

_MARKERS = ("status.json", "recipe.yaml", "config.yaml", "slurm/jobs.jsonl")


def is_run_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in _MARKERS)


def find_runs(path: Path) -> list[Path]:
    """`path` itself if it is a run directory, else its run subdirectories (sorted)."""
    if is_run_dir(path):
        return [path]
    if not path.is_dir():
        return []
    return sorted(child for child in path.iterdir() if child.is_dir() and is_run_dir(child))


def slurm_states() -> dict[str, str]:
    """job id -> Slurm state for every job Slurm still knows ({} without Slurm)."""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if " " in line)


def last_job(run_dir: Path) -> str:
    path = run_dir / "slurm" / "jobs.jsonl"
    if not path.exists():
        return ""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return str(json.loads(lines[-1])["job_id"]) if lines else ""


def summarize(run_dir: Path, jobs: dict[str, str] | None = None) -> dict:
    """One run's state, step, last loss, restarts and Slurm job."""
    status = read_status(run_dir)
    job_id = last_job(run_dir)
    loss = status.get("last_loss")
    if loss is None:
        train = [r for r in read_metrics(run_dir) if r.get("split", "train") == "train"]
        loss = train[-1].get("loss") if train else None
    state = status.get("state") or ("queued" if job_id else "new")
    return {
        "run": run_dir.name,
        "path": str(run_dir),
        "state": state,
        "step": status.get("step"),
        "max_steps": status.get("max_steps"),
        "last_loss": loss,
        "restarts": status.get("restarts", 0),
        "job": job_id,
        "slurm": (jobs or {}).get(job_id, "") if job_id else "",
        "updated": status.get("updated"),
    }


def _fmt_loss(loss) -> str:
    if loss is None:
        return "-"
    return f"{loss:.4g}" if isinstance(loss, (int, float)) and math.isfinite(loss) else str(loss)


def _fmt_age(updated) -> str:
    if not updated:
        return "-"
    seconds = max(0, time.time() - float(updated))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def format_table(rows: list[dict]) -> str:
    header = ["RUN", "STATE", "STEP", "LAST LOSS", "RESTARTS", "JOB", "SLURM", "UPDATED"]
    body = []
    for r in rows:
        step = "-" if r["step"] is None else str(r["step"])
        if r["max_steps"]:
            step += f"/{r['max_steps']}"
        body.append([r["run"], r["state"], step, _fmt_loss(r["last_loss"]), str(r["restarts"]),
                     r["job"] or "-", r["slurm"] or "-", _fmt_age(r["updated"])])  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in [header, *body])  # fmt: skip
