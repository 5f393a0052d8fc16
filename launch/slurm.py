"""Render and submit the sbatch script that runs one recipe on Slurm and survives preemption.

How a job survives (the script rendered by `render_sbatch` below, template in slurm/):
- one `srun` task per node runs torchrun; the c10d rendezvous is hosted on the first node at the
  address Slurm knows it by (`scontrol show node` NodeAddr), so node names need not resolve;
- Slurm sends the warning signal (`--signal=USR1@180`, no `B:`) to every process of the step, and
  SIGTERM on preemption or at the time limit. torchrun is started with both ignored, so it keeps
  supervising while its workers (the trainer) agree on a step, checkpoint, mark the run
  "preempted" and exit 0. A torchrun that reacted itself would tear workers down mid-save;
- after the step, the batch shell reads RUN/status.json: "completed" ends the job, "failed" fails
  it, anything else (preempted, a crash while "running", a SIGTERM) requeues the job with
  `scontrol requeue` until `max_restarts`. The restarted job runs the same script against the same
  run directory, and the trainer resumes from the latest committed checkpoint.

Every value in the script body is shell-quoted; values that go into `#SBATCH` lines (which sbatch
parses without a shell) must not contain whitespace, quotes or backslashes, and names are
validated, so a hostile recipe cannot inject commands.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.slurm_config import SlurmConfig, check_name, sbatch_value

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "slurm" / "job.sbatch.in"


def sbatch_path(path: Path, what: str) -> str:
    """An absolute path for `#SBATCH --output/--chdir`; `%` would be read as a Slurm pattern."""
    text = sbatch_value(str(path), what)
    if "%" in text:
        raise ValueError(f"{what} {text!r} contains '%', which Slurm expands in file names")
    return text


@dataclass
class JobSpec:
    """Everything one sbatch script needs."""

    run_dir: Path  # absolute; holds the run's checkpoints, status and the job's files
    recipe: Path  # the recipe the trainer reads (the snapshot in the run directory)
    slurm: SlurmConfig
    workdir: Path = field(default_factory=Path.cwd)  # the job's working directory
    overrides: list[str] = field(default_factory=list)  # extra `key=value` for the trainer
    entry: list[str] | None = None  # what torchrun runs; default: -m pretrain train RECIPE ...
    python: str = sys.executable
    repo_root: Path = REPO_ROOT

    def job_name(self) -> str:
        return check_name(self.slurm.job_name or self.run_dir.name, "job name")

    def torchrun_target(self) -> list[str]:
        if self.entry is not None:
            return list(self.entry)
        return ["-m", "pretrain", "train", str(self.recipe), *self.overrides,
                f"run.dir={self.run_dir}"]  # fmt: skip


def mesh_for_nodes(recipe: dict, cfg: SlurmConfig) -> dict[str, int]:
    """HSDP across nodes by default: a multi-node FSDP2 recipe that leaves `parallel.mesh`'s
    data-parallel sizes unset replicates over the nodes (dp_replicate = nodes) and shards over
    each node's processes (dp_shard = the rest, after tp), so parameter all-gathers stay on a
    node's fast links and only gradient all-reduces cross nodes."""
    parallel = recipe.get("parallel") or {}
    mesh = parallel.get("mesh") or {}
    if cfg.nodes < 2 or parallel.get("backend") != "fsdp2":
        return {}
    if "dp_replicate" in mesh or "dp_shard" in mesh:
        return {}
    return {"parallel.mesh.dp_replicate": cfg.nodes}


def sbatch_directives(spec: JobSpec) -> list[str]:
    """The `#SBATCH` lines: resources, the warning signal, requeue, log file, working dir."""
    cfg = spec.slurm
    opts: list[tuple[str, Any]] = [
        ("job-name", spec.job_name()),
        ("nodes", cfg.nodes),
        ("ntasks-per-node", 1),
        ("cpus-per-task", cfg.task_cpus()),
    ]
    if cfg.gpus_per_node:
        opts.append(("gpus-per-node", cfg.gpus_per_node))
    opts.append(("time", cfg.time))
    for key in ("partition", "account", "qos"):
        if getattr(cfg, key):
            opts.append((key, getattr(cfg, key)))
    if cfg.signal_seconds:
        opts.append(("signal", f"{cfg.signal}@{cfg.signal_seconds}"))
    opts += [
        ("requeue", None),
        ("open-mode", "append"),
        ("output", sbatch_path(spec.run_dir, "run directory") + "/slurm/%j.out"),
        ("chdir", sbatch_path(spec.workdir, "working directory")),
    ]
    opts += [(key, value) for key, value in cfg.sbatch.items() if value is not False]
    lines = []
    for key, value in opts:
        if value is None or value is True or value == "":
            lines.append(f"#SBATCH --{key}")
        else:
            lines.append(f"#SBATCH --{key}={sbatch_value(str(value), f'--{key}')}")
    return lines


def render_sbatch(spec: JobSpec) -> str:
    """The complete batch script for `spec` (validated; all body values shell-quoted)."""
    cfg = spec.slurm
    cfg.validate()
    if not spec.run_dir.is_absolute():
        raise ValueError(f"run directory {spec.run_dir} must be absolute")
    q = shlex.quote
    env_lines = [f"export {key}={q(str(value))}" for key, value in cfg.env.items()]
    target = spec.torchrun_target()
    torchrun = [  # one line each in the script, for a human reading the log
        f"{q(spec.python)} -m torch.distributed.run",
        f"--nnodes={cfg.nodes} --nproc-per-node={cfg.procs_per_node()} --max-restarts=0",
        '--rdzv-backend=c10d --rdzv-endpoint="$head_addr:$rdzv_port" --rdzv-id="$SLURM_JOB_ID"',
        # torchrun must not react to SIGTERM (see the module docstring); SIGINT stays for users.
        "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT",
        " ".join(q(arg) for arg in target[:4]),
        *(q(arg) for arg in target[4:]),
    ]
    values = {
        "SBATCH": "\n".join(sbatch_directives(spec)),
        "RUN_DIR": q(str(spec.run_dir)),
        "PYTHON": q(spec.python),
        "REPO_ROOT": q(str(spec.repo_root)),
        "MAX_RESTARTS": str(cfg.max_restarts),
        "RDZV_PORT": str(cfg.rdzv_port) if cfg.rdzv_port else "$((20000 + SLURM_JOB_ID % 10000))",
        "NODES": str(cfg.nodes),
        "CPUS_PER_TASK": str(cfg.task_cpus()),
        "SIGNAL": cfg.signal,
        "SIGNAL_TRAP": (
            f"trap 'log \"SIG{cfg.signal} reached the batch shell (the step gets its own)\"' "
            f"{cfg.signal}"
            if cfg.signal != "TERM"
            else "# (the warning signal is SIGTERM, trapped above)"
        ),
        "ENV": "\n".join(env_lines) if env_lines else "# (no slurm.env)",
        "TORCHRUN": " \\\n    ".join(torchrun),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("@" + key + "@", value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise RuntimeError(f"{TEMPLATE} has unknown placeholders {leftover}")
    return text


def wait_for(spec: JobSpec, job_ids: list[str]) -> None:
    """Start the job only after jobs `job_ids` completed successfully (`--dependency=afterok`;
    a job that requeues itself keeps its id, so the wait covers its restarts), and have Slurm
    cancel it if one of them fails rather than leave it pending forever."""
    if not job_ids:
        return
    ours = "afterok:" + ":".join(job_ids)
    own = spec.slurm.sbatch.get("dependency")
    spec.slurm.sbatch["dependency"] = f"{own},{ours}" if own else ours  # ",": all of them
    spec.slurm.sbatch.setdefault("kill-on-invalid-dep", "yes")


# ----------------------------------------------------------------------------- submission


def job_state(job_id: str) -> str:
    """Slurm's state of a job (PENDING, RUNNING, ...), or "" once Slurm has forgotten it."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def jobs_of(run_dir: Path) -> list[dict]:
    """Submission records of a run directory, oldest first."""
    path = run_dir / "slurm" / "jobs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def active_job(run_dir: Path) -> str:
    """The id of a job of this run that is still queued or running, or ""."""
    for record in reversed(jobs_of(run_dir)):
        if job_state(record["job_id"]) in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING",
                                           "COMPLETING", "SUSPENDED", "REQUEUE_HOLD"):  # fmt: skip
            return record["job_id"]
    return ""


def submit(spec: JobSpec, force: bool = False) -> str:
    """Write RUN/slurm/job.sbatch, submit it and record the job id; returns the id.

    Refuses when a job of the same run directory is still queued or running: two jobs writing
    one run directory would corrupt its checkpoints.
    """
    script = render_sbatch(spec)
    if not force:
        busy = active_job(spec.run_dir)
        if busy:
            raise RuntimeError(f"job {busy} of {spec.run_dir} is still active (use --force)")
    slurm_dir = spec.run_dir / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    path = slurm_dir / "job.sbatch"
    path.write_text(script)
    path.chmod(0o755)
    out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"sbatch failed: {out.stderr.strip() or out.stdout.strip()}")
    job_id = out.stdout.strip().split(";")[0]
    record = {"job_id": job_id, "submitted": time.time(), "script": str(path),
              "nodes": spec.slurm.nodes, "procs_per_node": spec.slurm.procs_per_node()}  # fmt: skip
    with open(slurm_dir / "jobs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return job_id
