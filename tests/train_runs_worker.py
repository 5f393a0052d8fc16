"""Several training runs in one launch: `python tests/train_runs_worker.py SPEC.json`, alone
(one process) or under torchrun; `RunBatch` declares the runs of a test module and starts them.

Why: a tiny run's steps take milliseconds, its launch (torchrun, every rank importing torch and
joining the group) takes seconds, and the multi-process tests compare dozens of runs. Each run
is the trainer's own `train(cfg)` on the recipe and overrides the CLI would take, one after
another in this process group; each seeds itself (run.seed), so a run's result does not depend
on what ran before it (the SIGKILL tests of tests/test_mesh.py and tests/test_distributed.py
check a run batched here bitwise against one launched by the CLI).

SPEC.json: [{"name": ..., "recipe": ..., "overrides": [...], "copy": [SRC, DST] or null}, ...].
`copy` puts a checkpoint from an earlier run in place before the run starts (rank 0 copies, the
others wait in the process group the run joins, as train() would join it).
Rank 0 prints `TRAIN_RUN_DONE <name>` after each; the first run that fails ends the process
(exit 1) naming it on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pretrain.config import TrainConfig, load_config
from pretrain.dist import barrier, init_distributed, shutdown
from pretrain.trainer import train

WORKER = Path(__file__).resolve()


@dataclass(frozen=True)
class Run:
    nproc: int  # 0: one process, no process group
    recipe: str
    overrides: tuple[str, ...]  # without run.dir
    copy: tuple[str, str] | None = None  # (an earlier run, its checkpoint dir) to start from


class RunBatch:
    """The runs a test module reads, started once per module and only those the selected
    tests declared (`@batch.needs(...)`): one launch per world size, each after the launches
    whose checkpoints its runs copy (within a launch, in the order of `runs`)."""

    def __init__(self, runs: dict[str, Run]) -> None:
        self.runs = runs
        self.needed_by: dict[str, tuple[str, ...]] = {}  # test function -> run names

    def needs(self, *names: str) -> Callable:
        unknown = [name for name in names if name not in self.runs]
        assert not unknown, unknown

        def mark(test: Callable) -> Callable:
            self.needed_by[test.__name__] = names
            return test
        return mark

    def start(self, request: pytest.FixtureRequest, root: Path, cwd: Path,
              env: dict[str, str], every_run: bool = False) -> Path:
        """Run the needed runs (all with `every_run`) into root/NAME; fails the requesting
        test if one fails."""
        wanted = set(self.runs) if every_run else {
            name for item in request.session.items if item.module is request.module
            for name in self.needed_by.get(item.originalname, ())}
        wanted |= {self.runs[name].copy[0] for name in wanted if self.runs[name].copy}
        for nproc in self._launch_order(wanted):
            names = [name for name, run in self.runs.items()
                     if name in wanted and run.nproc == nproc]
            specs = [self._spec(name, root) for name in names]
            proc = launch(nproc, specs, root / f"runs_{nproc}.json", cwd, env,
                          timeout=200 + 60 * len(specs))
            if proc.returncode != 0:
                pytest.fail(f"a batched run failed ({proc.returncode}, nproc={nproc}):\n"
                            f"{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
        return root

    def _launch_order(self, wanted: set[str]) -> list[int]:
        """World sizes in declaration order, a launch after those its runs copy from."""
        sizes = list(dict.fromkeys(run.nproc for name, run in self.runs.items()
                                   if name in wanted))
        after = {size: set() for size in sizes}
        names = list(self.runs)
        for name in wanted:
            run = self.runs[name]
            if run.copy:
                source = run.copy[0]
                if self.runs[source].nproc != run.nproc:
                    after[run.nproc].add(self.runs[source].nproc)
                else:
                    assert names.index(source) < names.index(name), (source, name)
        order: list[int] = []
        while sizes:
            ready = [size for size in sizes if after[size] <= set(order)]
            assert ready, f"launches copy from each other in a circle: {after}"
            order.append(ready[0])
            sizes.remove(ready[0])
        return order

    def _spec(self, name: str, root: Path) -> dict:
        run = self.runs[name]
        copy = run.copy and [str(root / run.copy[0] / run.copy[1]), str(root / name / run.copy[1])]
        return {"name": name, "recipe": run.recipe, "copy": copy,
                "overrides": [*run.overrides, f"run.dir={root / name}"]}


def launch(nproc: int, runs: list[dict], spec_path: Path, cwd: Path, env: dict[str, str],
           timeout: float) -> subprocess.CompletedProcess:
    """Run `runs` in one process (nproc 0) or one torchrun of nproc ranks."""
    spec_path.write_text(json.dumps(runs))
    launcher = ([] if nproc == 0 else
                ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
    return subprocess.run([sys.executable, *launcher, str(WORKER), str(spec_path)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def copy_checkpoint(cfg: TrainConfig, source: str, target: str) -> None:
    """Rank 0 copies; every rank waits for it in the group `cfg`'s run uses."""
    init_distributed(cfg.run.device, need_group=cfg.parallel.backend != "single",
                     timeout_s=cfg.run.collective_timeout_s)  # train() joins it the same way
    if int(os.environ.get("RANK", 0)) == 0:
        shutil.copytree(source, target)
    barrier()


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        runs = json.load(f)
    try:
        for run in runs:
            try:
                cfg = load_config(run["recipe"], run["overrides"])
                if run.get("copy"):
                    copy_checkpoint(cfg, *run["copy"])
                train(cfg)
            except BaseException:
                print(f"TRAIN_RUN_FAILED {run['name']}", file=sys.stderr, flush=True)
                raise
            if int(os.environ.get("RANK", 0)) == 0:
                print(f"TRAIN_RUN_DONE {run['name']}", flush=True)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
