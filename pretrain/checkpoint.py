"""Checkpoints: one directory per step, committed atomically, chosen only when complete.

    checkpoints/step_00000100/
        model/                 DCP shards of model + optimizer (any world size can load them)
        train_state.json       step, data-loader position, config, world size, backend
        rng/rank_00000.safetensors, rng/rank_00000.json   every rank's RNG states
        manifest.json          every file above with its size; written last

Commit protocol: everything is written into `step_XXXXXXXX.partial/`; when all ranks are done,
rank 0 writes the manifest and renames the directory (an atomic rename). A checkpoint is
complete when its final-named directory has a manifest and every listed file exists with the
listed size; anything else (a kill mid-save, a removed shard) is skipped with a warning naming
it, and the previous complete checkpoint is used. Nothing here is unpickled: JSON,
safetensors, and DCP through pretrain.safe_dcp.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from pretrain import safe_dcp
from pretrain.dist import DistEnv, all_reduce_max, barrier
from pretrain.run_dir import write_json_atomic

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.json"


class CheckpointError(RuntimeError):
    pass


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: Path, step: int) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"step": step, "files": {str(p.relative_to(path)): p.stat().st_size for p in files}}
    write_json_atomic(path / MANIFEST, manifest)


def check_complete(path: Path) -> str | None:
    """None when `path` is a complete checkpoint, else the reason it is not."""
    if not STEP_DIR.match(path.name):
        return f"{path.name} is not a committed checkpoint name (a save was interrupted)"
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        return f"{manifest_path} is missing"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        return f"{manifest_path} is unreadable ({e})"
    for rel, size in files.items():
        f = path / rel
        if not f.exists():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {size}"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    """Committed-looking checkpoint directories, oldest first."""
    if not root.exists():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=lambda p: p.name)


def latest_complete(root: Path, warn: bool = True) -> Path | None:
    """The newest complete checkpoint under `root`; incomplete ones are skipped with a warning."""
    if root.exists() and warn:
        for torn in sorted(root.glob("*.partial")):
            log.warning("skipping checkpoint %s: %s", torn, check_complete(torn))
    for path in reversed(list_checkpoints(root)):
        reason = check_complete(path)
        if reason is None:
            return path
        if warn:
            log.warning("skipping incomplete checkpoint %s: %s", path, reason)
    return None


def read_train_state(path: Path) -> dict:
    return json.loads((path / TRAIN_STATE).read_text())


# ------------------------------------------------------------------ RNG states, without pickle


def save_rng(path: Path, rank: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    save_file(tensors, str(path / f"rank_{rank:05d}.safetensors"))
    py_version, py_internal, py_gauss = random.getstate()
    meta = {"python": [py_version, list(py_internal), py_gauss], "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    (path / f"rank_{rank:05d}.json").write_text(json.dumps(meta))


def load_rng(path: Path, rank: int) -> None:
    tensors = load_file(str(path / f"rank_{rank:05d}.safetensors"))
    meta = json.loads((path / f"rank_{rank:05d}.json").read_text())
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_rank(seed: int, rank: int, step: int) -> None:
    """Fresh per-rank RNG streams, derived from (seed, rank, step)."""
    s = (seed * 1_000_003 + rank * 7919 + step) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


# ------------------------------------------------------------------ the checkpointer


class Checkpointer:
    """Saves and restores the full training state of one run directory."""

    def __init__(self, run_dir: Path, env: DistEnv, keep_last: int, use_async: bool = False):
        self.root = run_dir / "checkpoints"
        self.env, self.keep_last, self.use_async = env, keep_last, use_async
        self.pending: tuple[object, Path, Path] | None = None  # (future, partial dir, final dir)
        # Async writes run collectives from a background thread: give them their own group.
        self.pg = dist.new_group(backend="gloo") if use_async and dist.is_initialized() else None
        self.stager = None  # created at the first async save, reused (it caches its buffers)

    def save(self, step: int, engine, train_state: dict) -> None:
        """Write a checkpoint of `step`; with async, returns once the state is staged."""
        self.wait()
        partial = self.root / f"{step_dir_name(step)}.partial"
        final = self.root / step_dir_name(step)
        if self.env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            write_json_atomic(partial / TRAIN_STATE, train_state)
        barrier()
        save_rng(partial / "rng", self.env.rank)
        kwargs = {}
        if self.use_async and engine.supports_background_staging:
            if self.stager is None:
                self.stager = safe_dcp.background_stager()
            kwargs["stager"] = self.stager
        future = engine.save_model_state(partial / "model", process_group=self.pg, use_async=self.use_async, **kwargs)
        if future is None:
            barrier()
            self._commit(partial, final)
        else:
            self.pending = (future, partial, final)

    def poll(self) -> None:
        """Commit a finished async save (call on every rank once per step).

        Ranks agree first: one rank may see its write finished before another does.
        """
        if self.pending is None:
            return
        not_done = torch.tensor([0.0 if self.pending[0].done() else 1.0])
        if all_reduce_max(not_done).item() == 0.0:
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
            step = int(final.name.split("_")[1])
            write_manifest(partial, step)
            if final.exists():  # a re-save of the same step (e.g. end after a signal save)
                shutil.rmtree(final)
            os.replace(partial, final)
            _fsync_dir(self.root)
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
            raise CheckpointError(f"checkpoint.resume={resume}: not a complete checkpoint ({reason})")
        return path

    def load(self, path: Path, engine, seed: int) -> dict:
        """Restore engine state and this rank's RNG; returns the saved train_state."""
        engine.load_model_state(path / "model", process_group=self.pg)
        state = read_train_state(path)
        rng_file = path / "rng" / f"rank_{self.env.rank:05d}.safetensors"
        if state.get("world_size") == self.env.world_size and rng_file.exists():
            load_rng(path / "rng", self.env.rank)
        else:
            if self.env.is_main:
                log.warning(
                    "resuming %s saved at world size %s on %s ranks: RNG streams are re-derived",
                    path, state.get("world_size"), self.env.world_size,
                )
            seed_rank(seed, self.env.rank, state["step"])
        return state


def read_model_tensors(path: Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors of a committed checkpoint's model, loaded without a process group.

    Keys are canonical parameter names; works whatever world size or backend wrote it.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reason = check_complete(path)
    if reason is not None:
        raise CheckpointError(f"{path} is not a complete checkpoint: {reason}")
    metadata = safe_dcp.read_metadata(path / "model")
    state = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    nested = {"model": {k[len(prefix):]: v for k, v in state.items()}}
    import torch.distributed.checkpoint as dcp

    dcp.load(nested, storage_reader=safe_dcp.SafeFileSystemReader(str(path / "model")),
             planner=safe_dcp.SafeLoadPlanner(), no_dist=True)
    return nested["model"]
