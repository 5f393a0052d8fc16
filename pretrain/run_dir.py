"""Layout of a run directory, the one place every tool agrees on.

    RUN/config.yaml        resolved config (every default filled in), written at start
    RUN/model_stats.json   {"params", "params_non_embedding", "flops_per_sample", "flops_note"}
    RUN/metrics.jsonl      one JSON object per line: {"step", "split": "train"|"val", "loss", ...,
                           "samples", "tokens", "flops"} (samples/tokens/flops are cumulative)
    RUN/status.json        {"state", "step", "max_steps", "last_loss", "restarts", "updated",
                           "error" (when failed: the exception that ended the run, one line)}
    RUN/tb/                TensorBoard event files
    RUN/checkpoints/step_XXXXXXXX/   committed checkpoints (see pretrain/checkpoint/)

`state` is one of: running, completed, preempted (stopped on a signal after checkpointing;
a launcher should requeue it), failed (never requeued: the same error would come back).

status.json is strict JSON: a non-finite number (a NaN loss) is written as null, and files
written before that (with a bare NaN) read as null too.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

RUNNING, COMPLETED, PREEMPTED, FAILED = "running", "completed", "preempted", "failed"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON so that a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def finite_or_none(obj):
    """`obj` with every non-finite float (NaN, inf) replaced by None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's status, or {} when it has none yet (NaN in an old file reads as None)."""
    path = Path(run_dir) / "status.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(), parse_constant=lambda _: None)


def write_status(run_dir: str | os.PathLike, **fields) -> dict:
    """Merge `fields` into status.json (rank 0, or the rank that reports a failure). A new
    state other than failed drops the previous failure's error."""
    status = read_status(run_dir)
    if fields.get("state", FAILED) != FAILED:
        status = {k: v for k, v in status.items() if k not in ("error", "failed_rank")}
    status = finite_or_none(status | fields)
    status["updated"] = time.time()
    write_json_atomic(Path(run_dir) / "status.json", status)
    return status


def one_line_error(error: BaseException, limit: int = 1000) -> str:
    """`Type: message` on one line, for status.json and logs. A torch CheckpointException
    (one entry per failed rank, each with a traceback) is reduced to its first rank's error."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, wrapped = next(iter(failures.items()))
        inner = wrapped[0] if isinstance(wrapped, tuple) else wrapped
        if isinstance(inner, BaseException):
            return one_line_error(inner, limit) + f" (rank {rank}; {type(error).__name__})"
    text = " ".join(str(error).split()) or repr(error)
    line = f"{type(error).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
