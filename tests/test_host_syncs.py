"""No host sync in a steady-state step: every read of a tensor back to the host that the
project's code makes happens at a log/agreement step.

On CPU a read is counted by wrapping the Tensor methods that copy a value to the host
(`item`, `float()`, `int()`, `bool()`, `tolist`, `cpu`, `numpy`) and attributing each call made
from pretrain/ to the step the loop is at. On CUDA the same guarantee is checked by
torch.cuda.set_sync_debug_mode (logging.sync_debug=true, used by bench/gpu_check.sh).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch

import pretrain.dist
from tests.conftest import REPO
from tests.test_checkpoint_commit import run_inprocess

READS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")
PROJECT = str(REPO / "pretrain")


@contextlib.contextmanager
def count_host_reads():
    """Counter: loop step (None before the loop) -> reads made by project code during it.

    Only reads on the thread that runs the loop count: the loop is what a host sync stalls.
    `counts.sites` names where each read was made, so a failure shows its culprit."""
    counts: Counter = Counter()
    counts.sites = {}  # step -> "file:line in function" of each read, to name a stray one
    loop_thread = threading.get_ident()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            if (threading.get_ident() == loop_thread
                    and sys._getframe(1).f_code.co_filename.startswith(PROJECT)):
                step = pretrain.dist._progress["step"]
                counts[step] += 1
                stack = traceback.extract_stack(sys._getframe(1), limit=6)
                counts.sites.setdefault(step, []).append(
                    " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                for f in reversed(stack)))
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        pretrain.dist._progress["step"] = None


def test_no_host_sync_between_log_steps(tmp_path):
    with count_host_reads() as counts:
        run_inprocess(tmp_path / "run", "schedule.steps=12", "logging.every_steps=4",
                      "checkpoint.agree_every_steps=6", "checkpoint.every_steps=0",
                      "checkpoint.save_at_end=false")
    steps_with_reads = sorted(s for s in counts if s is not None)
    # log steps and agreement points only
    assert steps_with_reads == [4, 6, 8, 12], (counts, counts.sites)
    assert counts[4] > 0 and counts[6] > 0


def test_the_counter_sees_a_per_step_read(tmp_path):
    """Logging every step reads the loss every step: the counter must see it."""
    with count_host_reads() as counts:
        run_inprocess(tmp_path / "run", "schedule.steps=3", "logging.every_steps=1",
                      "checkpoint.every_steps=0", "checkpoint.save_at_end=false")
    assert all(counts[s] > 0 for s in (1, 2, 3)), counts


def test_a_run_leaves_no_step_for_the_next_runs_setup(tmp_path):
    """The loop's step names a collective that times out; once a run is over it is cleared, so
    an in-process run that follows does not blame its setup on the last run's step (in the full
    suite the model build's seed read was counted at a stale step 1)."""
    run_inprocess(tmp_path / "run", "schedule.steps=2", "checkpoint.every_steps=0",
                  "checkpoint.save_at_end=false")
    with pytest.raises(pretrain.dist.CollectiveTimeout) as timeout:
        with pretrain.dist.named_collective("barrier"):
            raise RuntimeError("Connection timed out")
    assert str(timeout.value) == "rank 0 timed out in barrier: Connection timed out"
