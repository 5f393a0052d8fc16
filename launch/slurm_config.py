"""The recipe's `slurm` section and the name/value rules that keep a rendered job safe.

A leaf module (its one project import is the leaf `data_pipeline.safe_names`), so the trainer's
config can embed the section without loading the launcher. `launch/slurm.py` renders and
submits the job from it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.safe_names import plain_name

SIGNALS = ("USR1", "TERM")  # what the trainer stops on (its SIGUSR2 means "save and go on")
# sbatch options the launcher sets itself; the recipe's `slurm.sbatch` may not override them.
RESERVED_SBATCH = {
    "nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "gpus-per-node", "time", "partition",
    "account", "qos", "job-name", "signal", "requeue", "no-requeue", "open-mode", "output",
    "error", "chdir", "array", "wrap",
}  # fmt: skip

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.,+-]+$")  # partitions, accounts, qos
_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2}|UNLIMITED|INFINITE)$")
_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SBATCH_VALUE = re.compile(r"^[!-~]*$")  # printable ASCII, no space
_UNSAFE_IN_SBATCH = set("\"'\\")
# DataLoader workers per GPU process that `auto` settings assume (pretrain/device_defaults.py)
LOADER_WORKERS_PER_GPU = 6


@dataclass
class SlurmConfig:
    """The recipe's `slurm` section: how to run it on a Slurm cluster (CLI flags override it)."""

    nodes: int = 1
    gpus_per_node: int = 0
    nproc_per_node: int = 0  # processes per node; 0 = gpus_per_node, or 1 without GPUs
    # CPUs for the node's single task (all its ranks and loader workers share them); 0 = auto:
    # 1 without GPUs, else (LOADER_WORKERS_PER_GPU + 1) per process (data.num_workers=auto fits)
    cpus_per_task: int = 0
    time: str = "01:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""
    job_name: str = ""  # "" = the run directory's name
    signal: str = "USR1"  # warning signal, `signal_seconds` before the limit: USR1 or TERM
    signal_seconds: int = 180
    max_restarts: int = 3  # requeues after preemption, time limit or crash
    rdzv_port: int = 0  # 0 = 20000 + job id % 10000 (distinct per job, stable across requeues)
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra options: {"constraint": "a100"}
    env: dict[str, str] = field(default_factory=dict)  # exported in the job before srun

    @classmethod
    def from_dict(cls, doc: dict | None) -> SlurmConfig:
        """Build from a recipe section, naming any unknown key or wrongly typed value."""
        doc = dict(doc or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) in slurm section: {', '.join(unknown)}")
        defaults = cls()
        if isinstance(doc.get("time"), int) and not isinstance(doc["time"], bool):
            doc["time"] = str(doc["time"])  # Slurm reads a bare number as minutes
        for key, value in doc.items():
            expected = type(getattr(defaults, key))
            if expected is int and isinstance(value, bool) or not isinstance(value, expected):
                raise ValueError(
                    f"slurm.{key} must be {expected.__name__}, got {type(value).__name__}"
                )
        return cls(**doc)

    def procs_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    def task_cpus(self) -> int:
        """cpus_per_task, or for 0 (auto) a rank's main process plus its loader workers."""
        if self.cpus_per_task:
            return self.cpus_per_task
        return (LOADER_WORKERS_PER_GPU + 1) * self.procs_per_node() if self.gpus_per_node else 1

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if self.nodes < 1:
            raise ValueError("slurm.nodes must be >= 1")
        for key in ("gpus_per_node", "nproc_per_node", "cpus_per_task", "max_restarts",
                    "signal_seconds"):
            if getattr(self, key) < 0:
                raise ValueError(f"slurm.{key} must be >= 0")
        if self.signal_seconds > 65535:
            raise ValueError("slurm.signal_seconds must be <= 65535")
        if not 0 <= self.rdzv_port <= 65535:
            raise ValueError("slurm.rdzv_port must be a TCP port (or 0)")
        if not _TIME.match(self.time):
            raise ValueError(f"slurm.time {self.time!r} is not a Slurm time like 04:00:00")
        for key in ("partition", "account", "qos"):
            value = getattr(self, key)
            if value and not _SLURM_WORD.match(value):
                raise ValueError(f"slurm.{key} {value!r} has characters Slurm names never use")
        if self.job_name:
            check_name(self.job_name, "slurm.job_name")
        if self.signal not in SIGNALS:
            raise ValueError(f"slurm.signal must be one of {', '.join(SIGNALS)}")
        for key, value in self.sbatch.items():
            if not isinstance(key, str) or not _OPTION.match(key):
                raise ValueError(f"slurm.sbatch option {key!r} is not an sbatch long option name")
            if key in RESERVED_SBATCH:
                raise ValueError(f"slurm.sbatch.{key} is set by the launcher; use slurm.* fields")
            if value is not None and not isinstance(value, bool):
                sbatch_value(str(value), f"slurm.sbatch.{key}")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV.match(key):
                raise ValueError(f"slurm.env name {key!r} is not a shell variable name")
            if "\0" in str(value):
                raise ValueError(f"slurm.env.{key} contains a NUL byte")


def check_name(name: str, what: str = "name") -> str:
    """Job and run names: a plain name that stays inside its root (`safe_names.plain_name`, the
    one path-safety rule), and letters, digits and `_.+-` starting with a letter or digit (what
    Slurm and a shell line take unquoted)."""
    plain_name(name, what)
    if not _NAME.match(name):
        raise ValueError(
            f"{what} {name!r} is not allowed: use letters, digits and _.+- (at most 128)"
        )
    return name


def sbatch_value(value: str, what: str) -> str:
    """A value safe inside an `#SBATCH --opt=value` line (sbatch splits on spaces and quotes)."""
    if not _SBATCH_VALUE.match(value) or _UNSAFE_IN_SBATCH & set(value):
        raise ValueError(
            f"{what} {value!r} cannot go into an #SBATCH line: no spaces, quotes, backslashes "
            "or control characters"
        )
    return value
