"""Checkpoint-level operations: convert, export, import, reshard, inspect.

A converted checkpoint is a complete pretrain checkpoint: train_state.json (step, loader
position, config; "backend" set to the target), the RNG files, the model/ directory in the
target format and a manifest, written into `<dst>.partial` and renamed when done, so an
interrupted conversion leaves nothing that looks complete. The trainer resumes from it with
checkpoint.resume=<dst> (or auto, when it sits in the run's checkpoints/ directory).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from pretrain.checkpoint.commit import (
    MANIFEST,
    PARTIAL_SUFFIX,
    STEP_DIR,
    TRAIN_STATE,
    CheckpointError,
    check_complete,
    commit,
    partial_dir,
    require_complete,
    step_dir_name,
)
from pretrain.checkpoint.convert.mismatch import check_compatible
from pretrain.checkpoint.convert.sinks import write_dcp, write_safetensors, write_universal
from pretrain.checkpoint.convert.sources import (
    PARAM,
    DCPSource,
    DeepSpeedSource,
    Source,
    TensorInfo,
    model_dir,
    open_source,
)
from pretrain.run_dir import write_json_atomic

TARGETS = {
    "dcp": "fsdp2",
    "deepspeed": "deepspeed",
}  # target format -> backend recorded in train_state


def destination(dst: Path, step: int) -> Path:
    """`dst` itself when named step_XXXXXXXX, else `dst/step_XXXXXXXX` (e.g. a new run's
    checkpoints/ directory, where `checkpoint.resume=auto` finds it)."""
    dst = Path(dst)
    return dst if STEP_DIR.match(dst.name) else dst / step_dir_name(step)


def _prepare(dst: Path) -> Path:
    if dst.exists():
        raise FileExistsError(f"{dst} already exists; choose a new destination")
    partial = partial_dir(dst)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _discard(partial: Path, created: list[Path]) -> None:
    """Undo a failed write: the partial directory and the (still empty) parents it made."""
    shutil.rmtree(partial, ignore_errors=True)
    for parent in created:
        try:
            parent.rmdir()
        except OSError:
            break


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of `path` that do not exist yet, deepest first."""
    return [p for p in Path(path).absolute().parents if not p.exists()]


def is_pretrain_checkpoint(path: Path) -> bool:
    """Written (or being written) by this project; anything else is another tool's checkpoint,
    read by its format alone."""
    path = Path(path)
    return (
        bool(STEP_DIR.match(path.name))
        or path.name.endswith(PARTIAL_SUFFIX)
        or (path / MANIFEST).exists()
        or (path / TRAIN_STATE).exists()
    )


def _train_state(src: Path, source: Source) -> dict:
    """The source's train_state.json (a checkpoint of this project must be complete), or for
    another tool's checkpoint the step its optimizer reached."""
    if is_pretrain_checkpoint(src):
        require_complete(src)
        return json.loads((Path(src) / TRAIN_STATE).read_text())
    step = int(source.meta.get("global_steps") or 0)
    if not step and source.has_optimizer:
        optimized = [n for n in source.params if source.optimized(n)]
        step = int(source.step(optimized[0]).item()) if optimized else 0
    return {"step": step, "foreign": True}


def convert(
    src: Path, dst: Path, to: str, progress: Callable[[str], None] = lambda _: None
) -> Path:
    """Write checkpoint `src` (any format) in format `to` ("dcp" or "deepspeed") at
    `destination(dst, step)`; returns that path.

    "deepspeed" writes DeepSpeed's universal layout, which DeepSpeed loads into ZeRO-1/2/3 at
    any world size; "dcp" loads into FSDP2/DDP/single at any world size.
    """
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    if is_pretrain_checkpoint(src):
        require_complete(src)  # before reading a torn save
    source = open_source(src)
    state = _train_state(src, source)
    if not source.has_optimizer:
        raise CheckpointError(
            f"{src} holds weights only; use `pretrain ckpt import` to start a run from weights"
        )
    dst = destination(dst, int(state["step"]))
    created = _missing_parents(dst)
    partial = _prepare(dst)
    try:
        if to == "dcp":
            write_dcp(source, partial / "model", progress=progress)
        else:
            write_universal(
                source, partial / "model", global_steps=int(state["step"]), progress=progress
            )
            _carry_ema(src, source, partial / "model" / "ema.safetensors")
        if (src / "rng").is_dir():
            shutil.copytree(src / "rng", partial / "rng")
        state = {
            **state,
            "backend": TARGETS[to],
            "converted_from": source.meta.get("format", source.format),
        }
        write_json_atomic(partial / TRAIN_STATE, state)
        commit(partial, dst, int(state["step"]))
    except BaseException:
        _discard(partial, created)
        raise
    return dst


def _carry_ema(src: Path, source: Source, out: Path) -> None:
    """The weight EMA into a DeepSpeed checkpoint (ZeRO-1/2 read it at any world size): copied
    from a DeepSpeed one, assembled from a DCP one's `ema.*`. Into DCP it is not carried (a
    resume then restarts it from the weights, saying so)."""
    ema = model_dir(src) / out.name
    if ema.is_file():
        shutil.copy2(ema, out)
    elif isinstance(source, DCPSource) and source.holds_ema:
        write_safetensors(DCPSource(source.path, "ema"), out)


def reshard(src: Path, dst: Path, progress: Callable[[str], None] = lambda _: None) -> Path | None:
    """DeepSpeed ZeRO checkpoints are tied to the world size (and ZeRO-3 vs 1/2 layout) that
    wrote them: rewrite as universal, loadable at any. DCP reshards on load: nothing to do."""
    source = open_source(src)
    if isinstance(source, DCPSource):
        return None
    return convert(src, dst, "deepspeed", progress)


def export_safetensors(
    src: Path,
    out: Path,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] = lambda _: None,
    ema: bool = False,
) -> Path:
    """Consolidated weights of any checkpoint (fp32 master weights where the format has them);
    `ema`: its EMA of the weights instead (optim.ema_decay)."""
    source = open_source(src, "ema" if ema else "model")
    meta = {"source_format": source.meta.get("format", source.format)}
    if ema:
        meta["weights"] = "ema"
    ts = Path(src) / TRAIN_STATE
    if ts.exists():
        meta["step"] = json.loads(ts.read_text())["step"]
    tmp = out.with_name(out.name + ".partial")
    created = _missing_parents(out)
    try:
        write_safetensors(source, tmp, dtype=dtype, metadata=meta, progress=progress)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _discard(tmp, created)
        raise
    return out


class FreshOptimizer(Source):
    """Weights from `weights`, Adam moments zero and step 0: what a new optimizer would hold,
    in the param groups the run's config gives (so the trainer loads it like any checkpoint)."""

    format = "fresh"

    def __init__(self, weights: Source, groups: list[dict]):
        super().__init__()
        self.weights = weights
        self.params = weights.params
        self.param_groups = groups
        self.meta = {"format": weights.meta.get("format", weights.format)}

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        if kind == PARAM:
            return self.weights.read(name, PARAM).to(self.params[name].dtype)
        return torch.zeros(self.params[name].shape, dtype=torch.float32)

    def step(self, name: str) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float32)


def _model_layout(cfg) -> tuple[dict[str, TensorInfo], list[dict]]:
    """Parameter shapes and optimizer param groups of the configured model, built on meta."""
    from pretrain.models import get_family
    from pretrain.optim import build_optimizer

    with torch.device("meta"):
        model = get_family(cfg.model.family).build(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    infos = {n: TensorInfo(n, tuple(p.shape), torch.float32) for n, p in model.named_parameters()}
    opt = build_optimizer(model, model.param_kinds(), cfg.optim, cfg.model)
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [names[id(p)] for p in g["params"]],
        }
        for g in opt.param_groups
    ]
    return infos, groups


def import_safetensors(
    src: Path, dst: Path, cfg, strip_prefix: str = "", add_prefix: str = ""
) -> Path:
    """A step-0 DCP checkpoint holding `src`'s weights for the model of `cfg`, to start a run
    from (`checkpoint.resume=<dst>`). Keys and shapes are checked against the model first;
    `strip_prefix`/`add_prefix` map the file's names onto the model's."""
    from pretrain.checkpoint.convert.sources import RenamedSource, SafetensorsSource

    weights: Source = SafetensorsSource(Path(src))
    if strip_prefix or add_prefix:
        weights = RenamedSource(weights, strip_prefix, add_prefix)
    return import_weights(weights, dst, cfg, str(src))


def import_weights(weights: Source, dst: Path, cfg, origin: str) -> Path:
    """`import_safetensors` for any weights-only Source (e.g. a transformers folder read
    through its adapter); `origin` names it in errors and in train_state.json."""
    from data_pipeline import build_loader
    from pretrain.config import to_dict

    infos, groups = _model_layout(cfg)
    check_compatible(
        {n: i.shape for n, i in weights.params.items()},
        {n: i.shape for n, i in infos.items()},
        origin,
    )
    weights.params = type(weights.params)(
        (n, infos[n]) for n in infos
    )  # model order, fp32 like training
    loader = build_loader(cfg.data, 0, 1, "train", cfg.optim.grad_accum)
    dst = destination(dst, 0)
    created = _missing_parents(dst)
    partial = _prepare(dst)
    try:
        write_dcp(FreshOptimizer(weights, groups), partial / "model")
        state = {
            "step": 0,
            "samples": 0,
            "loader": loader.state_dict(),
            "world_size": 1,
            "backend": "fsdp2",
            "config": to_dict(cfg),
            "imported_from": origin,
        }
        write_json_atomic(partial / TRAIN_STATE, state)
        commit(partial, dst, 0)
    except BaseException:
        _discard(partial, created)
        raise
    return dst


def inspect(path: Path) -> dict:
    """What a checkpoint holds: tensors (shape, dtype), step, world size, backend, size on disk."""
    path = Path(path)
    source = open_source(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    out = {
        "path": str(path),
        **source.meta,
        "bytes_on_disk": sum(p.stat().st_size for p in files),
        "num_tensors": len(source.params),
        "num_params": sum(i.numel for i in source.params.values()),
        "optimizer_state": source.has_optimizer,
    }
    ts = path / TRAIN_STATE if path.is_dir() else None
    if ts is not None and ts.exists():
        state = json.loads(ts.read_text())
        out |= {
            "step": state.get("step"),
            "backend": state.get("backend"),
            "world_size": state.get("world_size"),
        }
        out["complete"] = check_complete(path) is None
    if isinstance(source, DeepSpeedSource):
        out["world_size"] = source.world_size
    if source.has_optimizer:
        out["param_groups"] = [
            {k: v for k, v in g.items() if k in ("lr", "weight_decay", "lr_mult", "wd_mult")}
            | {"num_tensors": len(g["params"])}
            for g in source.param_groups
        ]
    out["tensors"] = [
        {"name": i.name, "shape": list(i.shape), "dtype": str(i.dtype).replace("torch.", "")}
        for i in source.params.values()
    ]
    return out
