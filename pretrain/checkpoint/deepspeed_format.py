"""DeepSpeed's own checkpoint format in `<checkpoint>/model/`, written and read by its engine.

`save_checkpoint(tag="model")` writes the ZeRO files there. Loads go through
`SafeCheckpointEngine`, so no file is unpickled beyond `weights_only` plus an allow-list of
DeepSpeed's plain-data classes (torch_files.py). A directory holding a universal checkpoint
(`zero/<param>/...`, what `pretrain ckpt convert --to deepspeed` writes) is loaded with
DeepSpeed's universal loader at any world size.

DeepSpeed's universal-checkpoint loader unpickles every file it reads without restriction, so
each file is first loaded here with the weights_only unpickler (memory-mapped, so no tensor
data is read): a file that would build anything else is refused before DeepSpeed sees it. The
checks also turn DeepSpeed's assertion failures into errors that say what to do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pretrain import compat
from pretrain.checkpoint.convert.mismatch import check_compatible
from pretrain.checkpoint.convert.sources import (
    CheckpointFormatError,
    DeepSpeedSource,
    UniversalSource,
    open_source,
)
from pretrain.checkpoint.torch_files import safe_torch_load
from pretrain.optim import canonical_name


def make_safe_checkpoint_engine(config_params):
    """DeepSpeed's torch checkpoint engine with loads restricted to weights_only + allow-list."""
    class SafeCheckpointEngine(compat.deepspeed_torch_checkpoint_engine()):
        def load(self, path: str, map_location=None):
            return safe_torch_load(path, map_location=map_location or "cpu")

    return SafeCheckpointEngine(config_params)


def install_safe_checkpoint_engine(ds_engine) -> None:
    """Route the DeepSpeed engine's checkpoint file I/O through `SafeCheckpointEngine`."""
    if type(ds_engine.checkpoint_engine).__name__ != "SafeCheckpointEngine":
        ds_engine.checkpoint_engine = make_safe_checkpoint_engine(
            compat.deepspeed_engine_config(ds_engine)
        )


def preflight(path: Path) -> None:
    """Every torch file under `path` must load with weights_only (+ DeepSpeed's data classes)."""
    for f in sorted(path.rglob("*.pt")):
        safe_torch_load(f, mmap=True)


def check_loadable(
    path: Path, zero_stage: int, world_size: int, expected: dict[str, tuple[int, ...]]
) -> bool:
    """Validate `path` for a ZeRO-`zero_stage` run on `world_size` ranks; True if universal."""
    if (path / ".metadata").exists():
        raise CheckpointFormatError(
            f"{path} is a DCP (FSDP2/DDP) checkpoint; convert it for DeepSpeed first: "
            f"pretrain ckpt convert {path.parent} NEW_DIR --to deepspeed"
        )
    source = open_source(path)
    check_compatible({n: i.shape for n, i in source.params.items()}, expected, str(path))
    if isinstance(source, UniversalSource):
        preflight(path)
        return True
    assert isinstance(source, DeepSpeedSource)
    same_layout = (source.stage == 3) == (zero_stage == 3)
    if source.world_size != world_size or not same_layout:
        raise CheckpointFormatError(
            f"{path} was written by ZeRO-{source.stage} on {source.world_size} ranks; this run is "
            f"ZeRO-{zero_stage} on {world_size}. DeepSpeed cannot repartition it on load: run "
            f"`pretrain ckpt reshard {path.parent} NEW_DIR` and resume from NEW_DIR "
            f"(checkpoint.resume=NEW_DIR)"
        )
    preflight(path)
    return False


def expected_shapes(ds_engine) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names and full shapes (ZeRO-3 keeps the full shape in ds_shape)."""
    return {
        canonical_name(n): tuple(getattr(p, "ds_shape", p.shape))
        for n, p in ds_engine.module.named_parameters()
    }


def save_deepspeed(ds_engine, path: Path) -> None:
    """DeepSpeed writes <save_dir>/<tag>/: tag = path.name ("model") puts its files in `path`."""
    install_safe_checkpoint_engine(ds_engine)
    ds_engine.save_checkpoint(str(path.parent), tag=path.name, save_latest=False)


def load_deepspeed(ds_engine, path: Path, world_size: int) -> None:
    """Load `path` (native ZeRO files of this layout, or universal) into `ds_engine`."""
    install_safe_checkpoint_engine(ds_engine)
    optimizer = ds_engine.optimizer  # the ZeRO optimizer wrapping the project's AdamW
    stage = ds_engine.zero_optimization_stage()
    universal = check_loadable(path, stage, world_size, expected_shapes(ds_engine))
    compat.deepspeed_engine_config(ds_engine).load_universal_checkpoint = universal
    # Group hyperparameters come from the config (as at start); DeepSpeed's ZeRO-3 universal
    # loader copies group 0's onto every group, which would lose per-group weight decay.
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    load_path, _ = ds_engine.load_checkpoint(
        str(path.parent),
        tag=path.name,
        load_lr_scheduler_states=False,
        load_module_strict=True,
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
    for group, saved in zip(optimizer.param_groups, hyper):
        group.update(saved)
    # The ZeRO-3 universal loader puts one `step` tensor object into every group's state;
    # AdamW increments it in place once per group, so the groups' steps would run ahead.
    for state in compat.deepspeed_base_optimizer(optimizer).state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


EMA_FILE = "ema.safetensors"  # the weight EMA of a ZeRO-1/2 run: full tensors, canonical names


def save_ema_file(ema: dict[str, torch.Tensor], path: Path) -> None:
    """The EMA (the same on every rank under ZeRO-1/2) into `path`/ema.safetensors."""
    from safetensors.torch import save_file

    save_file({n: t.detach().cpu().contiguous() for n, t in ema.items()}, str(path / EMA_FILE))


def load_ema_file(ema: dict[str, torch.Tensor], path: Path) -> None:
    """`path`/ema.safetensors into the live EMA tensors; names and shapes must match."""
    from safetensors.torch import load_file

    saved = load_file(str(path / EMA_FILE))
    check_compatible({n: tuple(t.shape) for n, t in saved.items()},
                     {n: tuple(t.shape) for n, t in ema.items()}, str(path / EMA_FILE))
    with torch.no_grad():
        for name, tensor in ema.items():
            tensor.copy_(saved[name])
