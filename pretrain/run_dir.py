"""Layout of a run directory, the one place every tool agrees on.

    RUN/config.yaml        resolved config (every default filled in), written at start
    RUN/model_stats.json   {"params", "params_non_embedding", "flops_per_sample", "flops_note"}
    RUN/metrics.jsonl      one JSON object per line: {"step", "split": "train"|"val", "loss", ...,
                           "samples", "tokens", "flops"} (samples/tokens/flops are cumulative)
    RUN/status.json        {"state", "step", "max_steps", "last_loss", "restarts", "updated"}
    RUN/tb/                TensorBoard event files
    RUN/checkpoints/step_XXXXXXXX/   committed checkpoints (see pretrain/checkpoint/)

`state` is one of: running, completed, preempted (stopped on a signal after checkpointing;
a launcher should requeue it), failed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

RUNNING, COMPLETED, PREEMPTED, FAILED = "running", "completed", "preempted", "failed"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON so that a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's status, or {} when it has none yet."""
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_status(run_dir: str | os.PathLike, **fields) -> dict:
    """Merge `fields` into status.json (rank 0 only)."""
    status = read_status(run_dir)
    status.update(fields, updated=time.time())
    write_json_atomic(Path(run_dir) / "status.json", status)
    return status


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of metrics.jsonl, skipping a torn last line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
