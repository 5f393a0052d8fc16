"""`pretrain scaling collect`: read run directories into runs.csv (and curves.csv).

For each run it reads RUN/config.yaml (family, width, depth, steps), RUN/model_stats.json
(parameters), RUN/metrics.jsonl (cumulative samples/tokens/FLOPs and losses) and
RUN/status.json (see pretrain/run_dir.py). The final loss is the mean of the last `smooth`
validation evaluations (`loss_source` says "val[k]"); a run without validation records falls
back to the mean of its last `smooth` training records ("train[k]"), which is noisier and says
so. Runs that are not completed are skipped with a reason unless `include_incomplete`.
Each row also records the run's LR schedule (optim.lr and the `schedule` section), which the
curve laws read, and for a WSD run the step its decay starts; a run resumed from another run's
checkpoint (`checkpoint.resume_fallback`, or `checkpoint.resume=PATH`: a decay branch of a
stable run) names it in `branch_of`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pretrain.overrides import get_dotted, read_yaml_file
from pretrain.run_dir import COMPLETED, read_metrics, read_status
from pretrain.scaling_laws.branch_plan import branch_source
from pretrain.scaling_laws.validate import ScalingDataError


@dataclass
class Collected:
    runs: list[dict]
    curves: list[dict]
    skipped: list[tuple[str, str]]  # (run dir, reason)


def _complete(records: list[dict], stats: dict) -> list[dict]:
    """Fill tokens/flops from samples and the model's per-sample accounting where a record
    lacks them (validation records carry only samples), and keep the last record of each
    (split, step): a resumed run logs the steps after its checkpoint again."""
    by_key: dict[tuple, dict] = {}
    for r in records:
        r = dict(r)
        samples = r.get("samples")
        if samples:
            if not r.get("tokens") and stats.get("tokens_per_sample"):
                r["tokens"] = samples * stats["tokens_per_sample"]
            if not r.get("flops") and stats.get("flops_per_sample"):
                r["flops"] = samples * stats["flops_per_sample"]
        by_key[(r.get("split"), r.get("step"))] = r
    return sorted(by_key.values(), key=lambda r: r.get("step") or 0)


def _final_loss(records: list[dict], smooth: int) -> tuple[float, str, dict]:
    for split in ("val", "train"):
        recs = [r for r in records if r.get("split") == split and r.get("loss") is not None]
        if recs:
            tail = recs[-smooth:]
            loss = sum(float(r["loss"]) for r in tail) / len(tail)
            return loss, f"{split}[{len(tail)}]", recs[-1]
    raise ScalingDataError("metrics.jsonl has no loss records")


def _schedule_columns(cfg: dict) -> dict:
    """The LR schedule (as `pretrain.schedule.lr_at` reads it) and where a branch came from."""
    sched = get_dotted(cfg, "schedule", {}) or {}
    out = {
        "lr": get_dotted(cfg, "optim.lr", ""), "schedule": sched.get("name", ""),
        "schedule_steps": sched.get("steps", ""), "warmup_steps": sched.get("warmup_steps", ""),
        "min_lr_ratio": sched.get("min_lr_ratio", ""),
        "decay_fraction": sched.get("decay_fraction", ""),
    }  # fmt: skip
    if sched.get("name") == "wsd" and sched.get("steps"):
        steps = int(sched["steps"])  # the decay length exactly as pretrain/schedule.py rounds it
        out["decay_start"] = steps - max(int(round(steps * float(sched["decay_fraction"]))), 1)
    ckpt = get_dotted(cfg, "checkpoint", {}) or {}
    out["branch_of"] = branch_source({f"checkpoint.{k}": v for k, v in ckpt.items()})
    return out


def collect_run(run_dir: Path, smooth: int = 1) -> tuple[dict, list[dict]]:
    """One run's row for runs.csv and its rows for curves.csv."""
    stats_path = run_dir / "model_stats.json"
    if not stats_path.exists():
        raise ScalingDataError("no model_stats.json (is this a run directory?)")
    stats = json.loads(stats_path.read_text())
    cfg_path = run_dir / "config.yaml"
    cfg = read_yaml_file(cfg_path, "run config") if cfg_path.exists() else {}
    records = _complete(read_metrics(run_dir), stats)
    loss, source, last = _final_loss(records, smooth)
    # tokens for LMs; ViT/DiT trainers may count patches as tokens or only samples
    tokens = last.get("tokens") or last.get("samples")
    if not tokens or not last.get("flops"):
        raise ScalingDataError("last metrics record lacks cumulative tokens/samples and flops")
    name = get_dotted(cfg, "run.name") or run_dir.name
    row = {
        "name": name,
        "params": stats["params"],
        "tokens": tokens,
        "flops": last["flops"],
        "loss": loss,
        "params_non_embedding": stats.get("params_non_embedding", ""),
        "samples": last.get("samples", ""),
        "loss_source": source,
        "family": get_dotted(cfg, "model.family", ""),
        "width": get_dotted(cfg, "model.width", ""),
        "depth": get_dotted(cfg, "model.depth", ""),
        "steps": last.get("step", ""),
        "status": read_status(run_dir).get("state", ""),
        "run_dir": str(run_dir),
        "flops_note": stats.get("flops_note", ""),
        **_schedule_columns(cfg),
    }
    split = source.split("[")[0]
    curve = [
        {"name": name, "params": stats["params"], "flops": r["flops"],
         "tokens": r.get("tokens") or r.get("samples"), "loss": r["loss"], "step": r.get("step")}
        for r in records
        if r.get("split") == split and r.get("flops") and r.get("loss") is not None
    ]  # fmt: skip
    return row, curve


def _mark_roles(rows: list[dict]) -> None:
    """role = "stable" for a run another collected run branched from, "branch" for that run:
    `fit` leaves stable runs out (an unannealed run; its branches stand for it)."""
    for row in rows:
        row["role"] = "branch" if row.get("branch_of") else ""
    for row in rows:
        source = Path(row["run_dir"]).resolve()
        if any(source in Path(r["branch_of"]).resolve().parents for r in rows if r["branch_of"]):
            row["role"] = "stable"


def collect(
    run_dirs: list[str | Path], smooth: int = 1, include_incomplete: bool = False
) -> Collected:
    """Collect every run directory; unreadable or unfinished ones are skipped with a reason."""
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    out = Collected([], [], [])
    pairs: list[tuple[dict, list[dict]]] = []
    for d in map(Path, run_dirs):
        if not d.is_dir():
            out.skipped.append((str(d), "not a directory"))
            continue
        state = read_status(d).get("state", "unknown")
        if state != COMPLETED and not include_incomplete:
            out.skipped.append((str(d), f"state is {state!r}, not 'completed'"))
            continue
        try:
            row, curve = collect_run(d, smooth)
        except (ScalingDataError, KeyError, ValueError, OSError) as e:
            out.skipped.append((str(d), f"{type(e).__name__}: {e}"))
            continue
        pairs.append((row, curve))
    _mark_roles([row for row, _ in pairs])
    names = [row["name"] for row, _ in pairs]
    for row, curve in pairs:
        if names.count(row["name"]) > 1:  # two runs with one run.name: add the directory
            row["name"] = f"{row['name']}@{Path(row['run_dir']).name}"
            for c in curve:
                c["name"] = row["name"]
        out.runs.append(row)
        out.curves.extend(curve)
    return out
