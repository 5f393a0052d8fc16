"""Checks before handing a checkpoint directory to DeepSpeed's own loader.

DeepSpeed's universal-checkpoint loader unpickles every file it reads without restriction.
Each file is first loaded here with the weights_only unpickler (memory-mapped, so no
tensor data is read): a file that would build anything else is refused before DeepSpeed sees
it. The checks also turn DeepSpeed's assertion failures into errors that say what to do.
"""

from __future__ import annotations

from pathlib import Path

from pretrain.ckpt.compat import check_compatible
from pretrain.ckpt.sources import (
    CheckpointFormatError,
    DeepSpeedSource,
    UniversalSource,
    open_source,
)
from pretrain.ckpt.torch_files import safe_torch_load


def preflight(path: Path) -> None:
    """Every torch file under `path` must load with weights_only (+ DeepSpeed's data classes)."""
    for f in sorted(path.rglob("*.pt")):
        safe_torch_load(f, mmap=True)


def check_loadable(path: Path, zero_stage: int, world_size: int, expected: dict[str, tuple[int, ...]]) -> bool:
    """Validate `path` for a ZeRO-`zero_stage` run on `world_size` ranks; True if universal."""
    if (path / ".metadata").exists():
        raise CheckpointFormatError(
            f"{path} is a DCP (FSDP2/DDP) checkpoint; convert it for DeepSpeed first: "
            f"pretrain ckpt convert {path.parent} NEW_DIR --to deepspeed")
    source = open_source(path)
    check_compatible({n: i.shape for n, i in source.params.items()}, expected, str(path))
    if isinstance(source, UniversalSource):
        preflight(path)
        return True
    assert isinstance(source, DeepSpeedSource)
    same_layout = (source.stage == 3) == (zero_stage == 3)
    if source.world_size != world_size or not same_layout:
        raise CheckpointFormatError(
            f"{path} was written by ZeRO-{source.stage} on {source.world_size} ranks; this run is ZeRO-{zero_stage} "
            f"on {world_size}. DeepSpeed cannot repartition it on load: run "
            f"`pretrain ckpt reshard {path.parent} NEW_DIR` and resume from NEW_DIR (checkpoint.resume=NEW_DIR)")
    preflight(path)
    return False
