"""Which adapter serves a (family, format), and the two operations every adapter supports:
export a checkpoint to a model folder, import a model folder into a step-0 checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint.convert.mismatch import CheckpointMismatchError, check_compatible
from pretrain.checkpoint.convert.sources import open_source
from pretrain.interop import diffusers_dit, hf_lm, hf_vit, timm_vit
from pretrain.interop.folder import (
    DEFAULT_SHARD_BYTES,
    FolderReader,
    read_config,
    write_folder,
    write_json,
    write_weights,
)
from pretrain.interop.plan import (
    ExportRefused,
    Piece,
    PlanSource,
    export_entries,
    import_entries,
    nonzero_constant,
)
from pretrain.interop.tokenizer import special_ids, write_tokenizer
from pretrain.models.config import ModelConfig


@dataclass(frozen=True)
class Adapter:
    """One foreign layout of one model family."""

    config_json: Callable[[ModelConfig, dict], dict]  # (model cfg, special token ids) -> config
    pieces: Callable[[ModelConfig], list[Piece]]  # our tensors <-> theirs
    math_keys: tuple[str, ...]  # config fields an imported folder must match
    # the library's value of a key a folder omits, for the expected config.json
    defaults: Callable[[dict], dict[str, Any]] = lambda expected: {}
    weights: str = "model"  # file prefix: model(-0000i-of-0000n).safetensors
    sharded: bool = True  # False: one <weights>.safetensors, no index (timm reads only that)
    tied: tuple[str, ...] = ()  # their tensors a folder may carry for tied embeddings
    # (model cfg, found config.json) -> keywords of config_json/pieces for a folder that
    # differs from our own export but imports exactly (e.g. GQA); export passes none
    layout: Callable[[ModelConfig, dict], dict] = lambda m, found: {}


ADAPTERS: dict[tuple[str, str], Adapter] = {
    ("lm", "hf"): Adapter(hf_lm.config_json, hf_lm.pieces, hf_lm.MATH_KEYS,
                          defaults=hf_lm.library_defaults,
                          tied=("lm_head.weight", "embed_out.weight"),
                          layout=hf_lm.foreign_layout),
    ("vit", "hf"): Adapter(hf_vit.config_json, hf_vit.pieces, hf_vit.MATH_KEYS,
                           defaults=lambda _: {"qkv_bias": True, "layer_norm_eps": 1e-12}),
    ("dit", "diffusers"): Adapter(diffusers_dit.config_json, diffusers_dit.pieces,
                                  diffusers_dit.MATH_KEYS,
                                  defaults=lambda _: diffusers_dit.DEFAULTS,
                                  weights="diffusion_pytorch_model"),
    ("vit", "timm"): Adapter(timm_vit.config_json, timm_vit.pieces, timm_vit.MATH_KEYS,
                             defaults=lambda _: timm_vit.DEFAULTS, sharded=False,
                             layout=timm_vit.foreign_layout),
}
def adapter_for(family: str, fmt: str) -> Adapter:
    if (family, fmt) not in ADAPTERS:
        known = ", ".join(f"{f} --format {t}" for f, t in sorted(ADAPTERS))
        raise ExportRefused(f"no --format {fmt} adapter for model.family={family!r} ({known})")
    return ADAPTERS[(family, fmt)]


def _meta_model(m: ModelConfig) -> torch.nn.Module:
    from pretrain.models import get_family

    with torch.device("meta"):
        return get_family(m.family).build(m)


def _param_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in _meta_model(m).named_parameters()}


def _saved_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of this model holds: parameters and persistent buffers."""
    return {n: tuple(t.shape) for n, t in _meta_model(m).state_dict().items()}


def _effective_weights(m: ModelConfig, read: Callable[[str], torch.Tensor]):
    """`read`, except that a σReparam linear's weight reads as the weight its forward uses,
    W * gamma / sigma(W) with sigma from the saved power-iteration vector u, computed by the
    module's own `effective_weight` (so the folded weight is bit-identical to the one used)."""
    from pretrain.models.blocks import SigmaReparamLinear

    sigma = {f"{n}.weight": (n, mod) for n, mod in _meta_model(m).named_modules()
             if isinstance(mod, SigmaReparamLinear)}
    if not sigma:
        return read

    def folded(name: str) -> torch.Tensor:
        if name not in sigma:
            return read(name)
        prefix, meta = sigma[name]
        with torch.device("meta"):
            linear = SigmaReparamLinear(meta.in_features, meta.out_features, bias=False)
        linear.weight = torch.nn.Parameter(read(name), requires_grad=False)
        linear.gamma = torch.nn.Parameter(read(f"{prefix}.gamma"), requires_grad=False)
        linear.u = read(f"{prefix}.u")
        with torch.no_grad():
            return linear.effective_weight()

    return folded


def checkpoint_config(checkpoint: Path) -> Any:
    """The run config a committed checkpoint was written with."""
    from pretrain.checkpoint.commit import read_train_state, require_complete
    from pretrain.config import config_from_dict

    require_complete(Path(checkpoint))
    return config_from_dict(read_train_state(Path(checkpoint))["config"])


def export_folder(checkpoint: Path, out: Path, fmt: str, dtype: torch.dtype = torch.float32,
                  tokenizer: Any | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                  progress: Callable[[str], None] = lambda _: None, ema: bool = False) -> Path:
    """The model folder of checkpoint `checkpoint` at `out`, for the model its config names
    (`ema`: from its EMA of the weights, optim.ema_decay).

    Refuses (ExportRefused, naming the option) a model the format cannot express exactly;
    checks the checkpoint's tensors against the configured model before writing anything.
    """
    m = checkpoint_config(checkpoint).model
    adapter = adapter_for(m.family, fmt)
    config = adapter.config_json(m, special_ids(tokenizer))
    if "torch_dtype" in config:  # transformers records it; diffusers has no such key
        config["torch_dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    table = adapter.pieces(m)
    ours = _param_shapes(m)
    source = open_source(checkpoint, "ema" if ema else "model")
    check_compatible({n: i.shape for n, i in source.params.items()}, _saved_shapes(m),
                     str(checkpoint))
    read = _effective_weights(m, lambda name: source.read(name))
    plan = PlanSource(export_entries(table, ours), read, dtype, meta={"format": fmt})

    def fill(partial: Path) -> None:
        write_json(partial / "config.json", config)
        shard_bytes = max_shard_bytes if adapter.sharded else None
        write_weights(plan, partial, adapter.weights, shard_bytes, progress)
        if tokenizer is not None:
            write_tokenizer(tokenizer, partial, m.lm.seq_len)

    return write_folder(out, fill)


def _check_config(found: dict, expected: dict, adapter: Adapter, folder: Path) -> None:
    """Every field that changes the math must agree (a missing one takes the library default);
    a dotted key names a nested field (timm's model_args.embed_dim)."""
    defaults = adapter.defaults(expected)
    for key in adapter.math_keys:
        want = _nested(expected, key)
        if want is _ABSENT:
            continue
        value = _nested(found, key)
        value = defaults.get(key, want) if value is _ABSENT else value
        if value != want:
            raise CheckpointMismatchError(
                f"{folder / 'config.json'}: {key}={value!r}, but the configured model needs "
                f"{key}={want!r}")


_ABSENT = object()


def _nested(config: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return _ABSENT
        config = config[part]
    return config


def folder_format(folder: Path) -> str:
    """"diffusers" for a diffusers model folder (its config names a `_class_name`), "timm" for
    a timm one (`architecture` and `pretrained_cfg`, as `save_for_hf` writes), else "hf"."""
    config = read_config(folder)
    if "_class_name" in config:
        return "diffusers"
    return "timm" if "architecture" in config and "pretrained_cfg" in config else "hf"


def import_folder(src: Path, dst: Path, cfg: Any, fmt: str) -> Path:
    """A step-0 checkpoint of `src`'s weights for the model of `cfg` (config fields, tensor
    names and shapes checked first); continue pretraining with checkpoint.resume=<result>."""
    from pretrain.checkpoint.convert.operations import import_weights

    src = Path(src)
    m = cfg.model
    if m.sigma_reparam:
        raise ExportRefused("model.sigma_reparam: an imported weight cannot be split back into "
                            "σReparam's W, gamma and u (import into a model without it)")
    adapter = adapter_for(m.family, fmt)
    found = read_config(src)
    layout = adapter.layout(m, found)
    _check_config(found, adapter.config_json(m, {}, **layout), adapter, src)
    table = adapter.pieces(m, **layout)
    ours = _param_shapes(m)
    reader = FolderReader(src, adapter.weights)
    theirs = {e.name: e.shape for e in export_entries(table, ours)}
    shapes = {n: s for n, s in reader.shapes.items() if not (n in adapter.tied and n not in theirs)}
    check_compatible(shapes, theirs, str(src))
    nonzero = nonzero_constant(table, reader.read)
    if nonzero is not None:
        raise CheckpointMismatchError(f"{src}: {nonzero} is not zero, and the configured model "
                                      "has no such tensor (exact only at zero)")
    plan = PlanSource(import_entries(table, ours), reader.read, meta={"format": fmt})
    return import_weights(plan, dst, cfg, str(src))
