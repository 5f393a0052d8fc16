"""Process groups end with the command: no gloo thread is alive when `pretrain train` (or a muP
tool) returns to the interpreter.

A gloo thread alive at interpreter exit can drop a tensor's last reference after Python began
finalising; it then needs the GIL, Python ends the thread inside a noexcept frame and the process
dies of SIGABRT ("terminate called without an active exception"), seen at the end of 3 of 6
two-node Slurm jobs. It happens by chance, so the test asserts its precondition instead: each
rank lists its threads (tests/teardown_worker.py) after the command returned.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretrain.run_dir import read_status
from tests.conftest import REPO, TINY, subprocess_env

pytestmark = pytest.mark.slow

ZERO3 = ["parallel.backend=deepspeed", "parallel.deepspeed.zero_stage=3"]
COMMANDS = {
    "fsdp2": ["train", "configs/vit_digits.yaml", *TINY, "schedule.steps=3",
              "parallel.backend=fsdp2"],
    "zero3": ["train", "configs/vit_digits.yaml", *TINY, "schedule.steps=3", *ZERO3],
    # several engines, one after another, in one process group
    "mup_zero3": ["mup", "coord-check", "configs/vit_digits.yaml", *TINY, *ZERO3,
                  "--widths", "16", "32", "--steps", "2", "--seeds", "1"],
}  # fmt: skip


@pytest.fixture(scope="module")
def threads_after(tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    """Per command, per rank: the names of the threads alive after the command returned. The
    three 2-rank jobs run at once (most of their wall time is start-up)."""
    root = tmp_path_factory.mktemp("teardown")
    procs = {}
    for name, argv in COMMANDS.items():
        out = root / name
        out.mkdir()
        where = [f"run.dir={out / 'run'}"] if argv[0] == "train" else ["--out", str(out / "mup")]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(REPO / "tests/teardown_worker.py"), str(out),
               *argv, *where]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    found = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, (
            f"{name}: rc {proc.returncode}\n{stdout[-2000:]}{stderr[-5000:]}"
        )
        if name != "mup_zero3":
            assert read_status(root / name / "run")["state"] == "completed"
        found[name] = {p.stem: json.loads(p.read_text())
                       for p in sorted((root / name).glob("threads_rank*.json"))}
    return found


@pytest.mark.parametrize("name", list(COMMANDS))
def test_no_gloo_thread_outlives_the_command(threads_after, name):
    ranks = threads_after[name]
    assert set(ranks) == {"threads_rank0", "threads_rank1"}
    for rank, names in ranks.items():
        gloo = [n for n in names if "gloo" in n]
        assert not gloo, f"{name} {rank}: gloo threads alive after the command returned: {gloo}"
