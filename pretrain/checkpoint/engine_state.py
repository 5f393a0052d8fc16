"""Engine state to and from `<checkpoint>/model/`, in the format the engine's tag names.

Engines only hand over and take back state: `state_dict()` / `load_state_dict()` plus a class
attribute `checkpoint_format`. "dcp": canonical names through `get_state_dict`, written with
DCP (dcp_io.py), so single, DDP and FSDP2 read each other's checkpoints at any world size.
"deepspeed": DeepSpeed's own files, written and read by its engine (deepspeed_format.py),
plus the weight EMA (ZeRO-1/2: full tensors on every rank) as `ema.safetensors`, by rank 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pretrain.checkpoint import dcp_io
from pretrain.checkpoint.commit import CheckpointError
from pretrain.checkpoint.integrity import ChecksumRecorder

log = logging.getLogger(__name__)

ASYNC_FORMATS = frozenset({"dcp"})  # formats whose save can run in the background


def save_engine_state(engine, path: Path, process_group=None, stager=None,
                      recorder: ChecksumRecorder | None = None):
    """Write the engine's state into `path`; returns the upload future when `stager` is given
    (async: the state is copied while training continues, and the engine's next optimizer
    step waits for that copy), else None once the files are written.

    `recorder` receives the checksums of the DCP files as they are written and the state's
    size (`planned_bytes`); DeepSpeed writes its files itself: those are hashed at commit."""
    recorder = recorder if recorder is not None else ChecksumRecorder()
    if engine.checkpoint_format == "deepspeed":
        from pretrain.checkpoint.deepspeed_format import save_deepspeed, save_ema_file

        save_deepspeed(engine.model, path)
        if engine.ema is not None and engine.env.rank == 0:
            save_ema_file(engine.ema.state_dict(), path)
        return None
    state = engine.state_dict()
    recorder.planned_bytes = dcp_io.state_nbytes(state)
    if stager is not None:
        staging, upload = dcp_io.async_save(state, path, process_group, stager, recorder)
        if staging is not None:
            engine.hold_updates_until(staging)
        return upload
    dcp_io.save(state, path, process_group, recorder)
    return None


def load_engine_state(engine, path: Path, process_group=None,
                      own_param_groups: bool = False) -> None:
    """Load `path` into the engine (resharding DCP to however this run is sharded).

    `own_param_groups`: keep this run's optimizer hyperparameter groups and load only the
    per-parameter state (moments, step) by name. For another tool's checkpoint: its groups
    are laid out its own way (one group, no muP `lr_mult`), the run's come from its recipe."""
    if engine.checkpoint_format == "deepspeed":
        from pretrain.checkpoint.deepspeed_format import EMA_FILE, load_deepspeed, load_ema_file

        load_deepspeed(engine.model, path, engine.env.world_size)
        if engine.ema is not None:
            if (path / EMA_FILE).exists():
                load_ema_file(engine.ema.state_dict(), path)
            else:
                _restart_ema(engine, path)
        return
    written_by_deepspeed = any(path.glob("*_optim_states.pt")) or (path / "zero").is_dir()
    if not (path / ".metadata").exists() and written_by_deepspeed:
        raise CheckpointError(
            f"{path} was written by DeepSpeed; parallel.backend={engine.name} reads DCP. Convert "
            f"it: pretrain ckpt convert {path.parent} NEW_DIR --to dcp")
    state = engine.state_dict()
    groups = state["optim"].pop("param_groups") if own_param_groups else None
    ema_missing = "ema" in state and not _holds_ema(path)
    if ema_missing:  # EMA newly enabled, or another tool's / an imported checkpoint
        del state["ema"]
    dcp_io.load(state, path, process_group)
    if groups is not None:
        state["optim"]["param_groups"] = groups
    engine.load_state_dict(state)
    if ema_missing:
        _restart_ema(engine, path)


def _restart_ema(engine, path: Path) -> None:
    """EMA newly enabled, or a checkpoint converted or imported without one."""
    log.warning("%s holds no EMA of the weights: the EMA starts from the loaded weights",
                path.parent)
    engine.ema.restart()


def _holds_ema(path: Path) -> bool:
    return any(k.startswith("ema.") for k in dcp_io.read_metadata(path).state_dict_metadata)
