"""Checkpoints: the on-disk format, the commit protocol, when to save, and every conversion.

On disk, one directory per step under RUN/checkpoints/:

    step_00000100/
        model/             the engine's state: DCP shards (single, DDP, FSDP2; any world size
                           loads them; `ema.*` beside `model.*` with optim.ema_decay) or
                           DeepSpeed's ZeRO / universal files (and the EMA: ema.safetensors)
        train_state.json   step, samples, data-loader position, config, world size, backend
        rng/               rank_00000.safetensors + rank_00000.json per rank
        manifest.json      every file above with its size and checksum; written last

Commit protocol: everything is written into `step_XXXXXXXX.partial/`; when all ranks are done,
rank 0 writes the manifest and renames the directory (atomic). A checkpoint is complete when
its final-named directory has a manifest and every listed file exists with the listed size;
anything else (a kill mid-save, a removed shard) is skipped with a warning naming it, and the
previous complete checkpoint is used. Before a resume loads a checkpoint, every file is checked
against its checksum (computed while it was written); a corrupt file, or a load that fails for
any reason, skips that checkpoint for the previous one on every rank. A failed save removes
its `.partial` and names the file and the cause. Nothing is unpickled beyond weights_only: JSON,
safetensors, DCP through an allow-listed metadata unpickler, DeepSpeed files through
torch.load(weights_only=True) plus an allow-list of DeepSpeed's plain-data classes.

Engines only hand over and take back state (`state_dict` / `load_state_dict`) and name their
format in the class attribute `checkpoint_format`; nothing in pretrain/engines/ imports this
package. Which file does what:

    commit.py            layout names, manifest, commit (atomic rename), completeness, latest,
                         verify_checkpoint (content against the manifest's checksums)
    integrity.py         checksums (xxh3_64): computed while written, verified before a load
    checkpointer.py      Checkpointer: save (sync/async), poll, retention, resume with fallback
    policy.py            SavePolicy: when the trainer saves (every N steps, on request, at end)
    rng.py               RNG states per rank, and fresh per-rank seeds
    engine_state.py      engine state <-> model/, dispatched on `engine.checkpoint_format`
    dcp_io.py            DCP save/async save/load without unpickling; read_model_tensors
    writeback.py         files that start disk writeback while written (faster fsync)
    deepspeed_format.py  DeepSpeed save/load through its engine, safe loads, load-time checks
    torch_files.py       torch.load restricted to weights_only + DeepSpeed's data classes
    convert/             streaming conversion: sources (readers), sinks (writers), operations
                         (convert, reshard, export/import safetensors, inspect), mismatch
                         (keys/shapes vs a model), synthetic (generated checkpoints for tests)
"""

from pretrain.checkpoint.checkpointer import Checkpointer, CheckpointSaveError
from pretrain.checkpoint.commit import (
    MANIFEST,
    STEP_DIR,
    TRAIN_STATE,
    CheckpointError,
    check_complete,
    latest_complete,
    list_checkpoints,
    read_manifest,
    read_train_state,
    step_dir_name,
    verify_checkpoint,
)
from pretrain.checkpoint.dcp_io import UnsafeCheckpointError, read_metadata, read_model_tensors
from pretrain.checkpoint.engine_state import load_engine_state, save_engine_state
from pretrain.checkpoint.policy import SavePolicy
from pretrain.checkpoint.rng import seed_rank

__all__ = [
    "MANIFEST", "STEP_DIR", "TRAIN_STATE", "CheckpointError", "CheckpointSaveError",
    "Checkpointer", "SavePolicy", "UnsafeCheckpointError", "check_complete", "latest_complete",
    "list_checkpoints", "load_engine_state", "read_manifest", "read_metadata",
    "read_model_tensors", "read_train_state", "save_engine_state", "seed_rank", "step_dir_name",
    "verify_checkpoint",
]
