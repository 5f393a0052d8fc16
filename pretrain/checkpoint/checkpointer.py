"""The Checkpointer: saves and restores the full training state of one run directory.

    checkpoints/step_00000100/
        model/             the engine's state in its format (DCP shards, or DeepSpeed's files)
        train_state.json   step, data-loader position, config, world size, backend
        rng/               every rank's RNG states (rng.py)
        manifest.json      every file above with its size and checksum; written last (commit.py)

Failures are agreed by all ranks, so no rank waits in a collective another rank left:
- save: each rank's checksums and error (if any) are gathered where a barrier was; a save that
  failed anywhere removes its `.partial`, keeps the previous checkpoints, and raises
  `CheckpointSaveError` naming the file and the cause ("no space left on device writing X:
  N MB needed, M MB free").
- resume: the newest complete checkpoint is verified (each rank hashes its share of the files)
  and loaded; if either fails on any rank, for any reason (torch's CheckpointException is a
  BaseException), every rank skips it with a warning naming the file or error and tries the
  previous one. Only when none loads does the run fail.
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.checkpoint import dcp_io
from pretrain.checkpoint.commit import (
    TRAIN_STATE,
    CheckpointError,
    check_complete,
    commit,
    complete_checkpoints,
    latest_complete,
    list_checkpoints,
    partial_dir,
    read_manifest,
    read_train_state,
    step_dir_name,
    verify_checkpoint,
)
from pretrain.checkpoint.engine_state import ASYNC_FORMATS, load_engine_state, save_engine_state
from pretrain.checkpoint.integrity import ChecksumRecorder, relative_digests, write_json
from pretrain.checkpoint.rng import load_rng, rng_file, save_rng, seed_rank
from pretrain.dist import DistEnv, all_reduce_max, barrier
from pretrain.run_dir import one_line_error

log = logging.getLogger(__name__)


class CheckpointSaveError(CheckpointError):
    """A save failed on some rank; its `.partial` is removed, older checkpoints are kept."""


_NOT_FAILURES = (KeyboardInterrupt, SystemExit)  # a signal or an exit: not the checkpoint's fault


def _gather(obj: object) -> list:
    """`obj` from every rank, in rank order (the collective all ranks meet at after a step)."""
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _first_error(errors: list[str | None]) -> str | None:
    return next((e for e in errors if e is not None), None)


def _root_error(error: BaseException) -> BaseException:
    """The error behind a torch CheckpointException (which wraps each rank's exception)."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) else inner
        if isinstance(inner, BaseException):
            return _root_error(inner)
    return error


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Checkpointer:
    """Saves and restores the full training state of one run directory."""

    def __init__(self, run_dir: Path, env: DistEnv, keep_last: int, use_async: bool = False):
        self.root = run_dir / "checkpoints"
        self.env, self.keep_last, self.use_async = env, keep_last, use_async
        # (future, partial dir, final dir, recorder, error on this rank) of an async save
        self.pending: tuple[object, Path, Path, ChecksumRecorder, str | None] | None = None
        # Async writes run collectives from a background thread: give them their own group.
        self.pg = dist.new_group(backend="gloo") if use_async and dist.is_initialized() else None
        self.stager = None  # made at the first async save, reused while it can (buffer cache)
        self._warned_async = False

    def save(self, step: int, engine, train_state: dict) -> None:
        """Write a checkpoint of `step`; with async, returns once the state is staged."""
        self.wait()
        final = self.root / step_dir_name(step)
        partial = partial_dir(final)
        recorder = ChecksumRecorder()
        error = None
        if self.env.is_main:
            try:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                state_file = partial / TRAIN_STATE
                recorder.record(state_file, write_json(state_file, train_state))
            except _NOT_FAILURES:
                raise
            except BaseException as e:
                error = self._describe_save_error(e, partial, recorder)
        self._raise_if_failed(_gather(error), partial)  # where a barrier was
        future = None
        try:
            use_async = self.use_async and self._can_save_async(engine)
            if use_async and self.stager is not None and not dcp_io.stager_reusable(self.stager):
                self.stager.close()  # this torch's stager closed itself after the last save
                self.stager = None
            if use_async and self.stager is None:
                self.stager = dcp_io.background_stager()
            # The engine's state first: DCP and DeepSpeed agree on their own failures across
            # ranks; a rank-local failure after them (RNG files) is agreed at the gather below.
            future = save_engine_state(engine, partial / "model", process_group=self.pg,
                                       stager=self.stager if use_async else None,
                                       recorder=recorder)
            for path, digest in save_rng(partial / "rng", self.env.rank).items():
                recorder.record(path, digest)
        except _NOT_FAILURES:
            raise
        except BaseException as e:
            error = self._describe_save_error(e, partial, recorder)
        if future is None:
            self._finish(partial, final, recorder, error)
        else:
            self.pending = (future, partial, final, recorder, error)

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
        try:
            self.wait()
        finally:
            if self.stager is not None:
                self.stager.close()
                self.stager = None

    def wait(self) -> None:
        if self.pending is None:
            return
        future, partial, final, recorder, error = self.pending
        self.pending = None
        try:
            future.result()
        except _NOT_FAILURES:
            raise
        except BaseException as e:
            error = error or self._describe_save_error(e, partial, recorder)
        self._finish(partial, final, recorder, error)

    def _finish(self, partial: Path, final: Path, recorder: ChecksumRecorder,
                error: str | None) -> None:
        """Agree on the save (every rank's checksums and error), then commit it or drop it."""
        if error is None and recorder.errors:  # lost on one of DCP's writer threads
            error = self._describe_save_error(recorder.errors[0], partial, recorder)
        digests = relative_digests(recorder.digests(), partial) if error is None else {}
        gathered = _gather((digests, error))
        self._raise_if_failed([e for _, e in gathered], partial)
        if self.env.is_main:
            merged = {name: d for rank_digests, _ in gathered for name, d in rank_digests.items()}
            commit(partial, final, int(final.name.split("_")[1]), merged)
            self._apply_retention()
        barrier()

    def _raise_if_failed(self, errors: list[str | None], partial: Path) -> None:
        """When any rank failed: drop the `.partial` (all ranks have stopped writing into it)
        and raise the first error on every rank."""
        error = _first_error(errors)
        if error is None:
            return
        if self.env.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        barrier()
        raise CheckpointSaveError(error)

    def _describe_save_error(self, error: BaseException, partial: Path,
                             recorder: ChecksumRecorder) -> str:
        """One line naming the file and the cause; for a full disk, what was needed and free."""
        root = _root_error(error)
        # The OSError a file write raised is the cause, whatever DCP or torch made of it.
        root = next((e for e in [root, *recorder.errors] if isinstance(e, OSError)), root)
        filename = getattr(root, "filename", None)
        where = f" writing {filename}" if filename else ""
        if isinstance(root, OSError) and root.errno == errno.ENOSPC:
            # Free space as it will be once the partial checkpoint is removed.
            free = shutil.disk_usage(self.root if self.root.exists() else self.root.parent).free
            free += sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
            needed = recorder.planned_bytes or self._last_checkpoint_bytes()
            need = f"{_megabytes(needed)} needed, " if needed else ""
            return (f"saving checkpoint {partial.name} failed: no space left on device{where}: "
                    f"{need}{_megabytes(free)} free (rank {self.env.rank})")
        return f"saving checkpoint {partial.name} failed{where}: {one_line_error(root)}"

    def _last_checkpoint_bytes(self) -> int | None:
        """Size of the newest complete checkpoint: the estimate of a save with no known size."""
        for path in complete_checkpoints(self.root, warn=False):
            return sum(read_manifest(path)["files"].values())
        return None

    def _apply_retention(self) -> None:
        committed = [p for p in list_checkpoints(self.root) if check_complete(p) is None]
        for old in committed[: max(len(committed) - self.keep_last, 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self, resume: str, engine, seed: int,
               restore: Callable[[dict], None] = lambda state: None, *,
               fallback: str = "") -> tuple[Path, dict] | None:
        """Load the checkpoint `resume` names into `engine`, this rank's RNG and, through
        `restore(train_state)`, anything else (the data loader's position); returns (path,
        train_state), or None when there is nothing to resume.

        `auto`: the newest complete checkpoint here that verifies and loads on every rank, falling
        back to older ones with a warning; CheckpointError when there are checkpoints and none
        loads; with none here, the checkpoint `fallback` names (if any), so a requeued branch
        resumes from its own progress rather than from where it first started. An explicit path
        must verify and load. `none`: start fresh.
        """
        key = "checkpoint.resume"
        if resume == "none":
            return None
        if resume == "auto" and fallback and latest_complete(self.root, warn=False) is None:
            resume, key = fallback, "checkpoint.resume_fallback"
        if resume == "auto":
            candidates = complete_checkpoints(self.root, warn=self.env.is_main)
        else:
            path = Path(resume)
            reason = check_complete(path)
            if reason is not None:
                raise CheckpointError(f"{key}={resume}: not a complete checkpoint ({reason})")
            candidates = iter([path])
        tried, error = 0, None
        for path in candidates:
            tried += 1
            error = _first_error(_gather(self._verify_share(path)))
            if error is None:
                state, load_error = self._try_load(path, engine, seed, restore)
                error = _first_error(_gather(load_error))
            if error is None:
                return path, state
            if self.env.is_main:
                log.warning("skipping checkpoint %s: %s", path, error)
        if tried == 0:
            return None
        if resume != "auto":
            raise CheckpointError(f"{key}={resume} cannot be loaded: {error}")
        raise CheckpointError(f"none of the {tried} complete checkpoint(s) in {self.root} loads; "
                              f"the oldest: {error}")

    def _verify_share(self, path: Path) -> str | None:
        """Check this rank's share of the files' checksums (each file is read by one rank)."""
        try:
            names = sorted(read_manifest(path)["files"])
            return verify_checkpoint(path, names[self.env.rank :: self.env.world_size])
        except _NOT_FAILURES:
            raise
        except BaseException as e:
            return one_line_error(e)

    def _try_load(self, path: Path, engine, seed: int,
                  restore: Callable[[dict], None]) -> tuple[dict | None, str | None]:
        try:
            state = self.load(path, engine, seed)
            restore(state)
            return state, None
        except _NOT_FAILURES:
            raise
        except BaseException as e:
            return None, f"loading it failed: {one_line_error(e)}"

    def load(self, path: Path, engine, seed: int) -> dict:
        """Restore engine state and this rank's RNG; returns the saved train_state."""
        state = read_train_state(path)
        load_engine_state(engine, path / "model", process_group=self.pg,
                          own_param_groups=bool(state.get("foreign")))  # converted, see there
        # A rank's saved RNG is its own only on the same mesh (TP ranks share the DP rank's).
        layout = getattr(engine, "layout", None)
        mesh = layout.shape.as_dict() if layout is not None else None
        same_world = (state.get("world_size") == self.env.world_size
                      and state.get("mesh", mesh) == mesh)
        if same_world and rng_file(path / "rng", self.env.rank).exists():
            load_rng(path / "rng", self.env.rank)
        else:
            if self.env.is_main:
                log.warning(
                    "resuming %s saved at world size %s on %s ranks: RNG streams are re-derived",
                    path, state.get("world_size"), self.env.world_size,
                )
            seed_rank(seed, layout.dp_rank if layout is not None else self.env.rank,
                      state["step"])
        return state
