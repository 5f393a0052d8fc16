"""The Checkpointer: saves and restores the full training state of one run directory.

    checkpoints/step_00000100/
        model/             the engine's state in its format (DCP shards, or DeepSpeed's files)
        train_state.json   step, data-loader position, config, world size, backend
        rng/               every rank's RNG states (rng.py)
        manifest.json      every file above with its size; written last (commit.py)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.checkpoint import dcp_io
from pretrain.checkpoint.commit import (
    TRAIN_STATE,
    CheckpointError,
    check_complete,
    commit,
    latest_complete,
    list_checkpoints,
    partial_dir,
    read_train_state,
    step_dir_name,
)
from pretrain.checkpoint.engine_state import ASYNC_FORMATS, load_engine_state, save_engine_state
from pretrain.checkpoint.rng import load_rng, rng_file, save_rng, seed_rank
from pretrain.dist import DistEnv, all_reduce_max, barrier
from pretrain.run_dir import write_json_atomic

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores the full training state of one run directory."""

    def __init__(self, run_dir: Path, env: DistEnv, keep_last: int, use_async: bool = False):
        self.root = run_dir / "checkpoints"
        self.env, self.keep_last, self.use_async = env, keep_last, use_async
        self.pending: tuple[object, Path, Path] | None = None  # (future, partial dir, final dir)
        # Async writes run collectives from a background thread: give them their own group.
        self.pg = dist.new_group(backend="gloo") if use_async and dist.is_initialized() else None
        self.stager = None  # created at the first async save, reused (it caches its buffers)
        self._warned_async = False

    def save(self, step: int, engine, train_state: dict) -> None:
        """Write a checkpoint of `step`; with async, returns once the state is staged."""
        self.wait()
        final = self.root / step_dir_name(step)
        partial = partial_dir(final)
        if self.env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            write_json_atomic(partial / TRAIN_STATE, train_state)
        barrier()
        save_rng(partial / "rng", self.env.rank)
        use_async = self.use_async and self._can_save_async(engine)
        if use_async and self.stager is None:
            self.stager = dcp_io.background_stager()
        future = save_engine_state(engine, partial / "model", process_group=self.pg,
                                   stager=self.stager if use_async else None)
        if future is None:
            barrier()
            self._commit(partial, final)
        else:
            self.pending = (future, partial, final)

    def _can_save_async(self, engine) -> bool:
        fmt = engine.checkpoint_format
        if fmt in ASYNC_FORMATS:
            return True
        if not self._warned_async and self.env.is_main:
            log.warning("checkpoint.async_save is not supported by the %s backend; saving "
                        "synchronously", engine.name)
            self._warned_async = True
        return False

    def poll(self) -> None:
        """Commit a finished async save (call on every rank at the loop's agreement points).

        Ranks agree first: one rank may see its write finished before another does. The flag
        travels on the compute device, like every collective of the loop.
        """
        if self.pending is None:
            return
        not_done = torch.tensor([0.0 if self.pending[0].done() else 1.0], device=self.env.device)
        if all_reduce_max(not_done, "all_reduce(async save done)").item() == 0.0:
            self.wait()

    def close(self) -> None:
        """Finish any pending save and release the stager's thread."""
        self.wait()
        if self.stager is not None:
            self.stager.close()
            self.stager = None

    def wait(self) -> None:
        if self.pending is None:
            return
        future, partial, final = self.pending
        self.pending = None
        future.result()
        barrier()
        self._commit(partial, final)

    def _commit(self, partial: Path, final: Path) -> None:
        if self.env.is_main:
            commit(partial, final, int(final.name.split("_")[1]))
            self._apply_retention()
        barrier()

    def _apply_retention(self) -> None:
        committed = [p for p in list_checkpoints(self.root) if check_complete(p) is None]
        for old in committed[: max(len(committed) - self.keep_last, 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def find_resume_point(self, resume: str) -> Path | None:
        """`auto`: the latest complete checkpoint here; `none`; or an explicit checkpoint path."""
        if resume == "none":
            return None
        if resume == "auto":
            return latest_complete(self.root, warn=self.env.is_main)
        path = Path(resume)
        reason = check_complete(path)
        if reason is not None:
            raise CheckpointError(
                f"checkpoint.resume={resume}: not a complete checkpoint ({reason})")
        return path

    def load(self, path: Path, engine, seed: int) -> dict:
        """Restore engine state and this rank's RNG; returns the saved train_state."""
        load_engine_state(engine, path / "model", process_group=self.pg)
        state = read_train_state(path)
        same_world = state.get("world_size") == self.env.world_size
        if same_world and rng_file(path / "rng", self.env.rank).exists():
            load_rng(path / "rng", self.env.rank)
        else:
            if self.env.is_main:
                log.warning(
                    "resuming %s saved at world size %s on %s ranks: RNG streams are re-derived",
                    path, state.get("world_size"), self.env.world_size,
                )
            seed_rank(seed, self.env.rank, state["step"])
        return state
