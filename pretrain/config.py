"""Typed configuration: dataclass sections, YAML recipes, dotted CLI overrides.

A recipe is YAML whose nested keys mirror the dataclasses below. `load_config` starts from the
defaults, merges the recipe, then the `key.sub=value` overrides, and validates every key and
type: an unknown key fails naming the closest valid key; a wrong type names the key and the
type expected. The resolved config (every default filled in) is saved into the run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from data_pipeline.config import DataConfig
from launch.slurm import SlurmConfig
from pretrain.engines.deepspeed_config import DeepSpeedConfig
from pretrain.models.config import ModelConfig, ViTConfig
from pretrain.models.mup_config import MupConfig

__all__ = ["ConfigError", "TrainConfig", "ModelConfig", "ViTConfig", "MupConfig", "DataConfig", "load_config"]


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message is one line."""


@dataclass
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05  # applied to matrix-like parameters only
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "wsd", "constant"] = "cosine"
    steps: int = 1000  # optimizer steps in the whole run
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine / wsd floor as a fraction of optim.lr
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end


@dataclass
class ParallelConfig:
    backend: Literal["single", "ddp", "fsdp2", "deepspeed"] = "single"
    mixed_precision: Literal["none", "bf16"] = "none"  # fsdp2: bf16 params, fp32 reduce
    activation_checkpointing: bool = False
    compile: bool = False
    reshard_after_forward: bool = True  # fsdp2
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass
class CheckpointConfig:
    every_steps: int = 100  # 0 disables periodic checkpoints
    keep_last: int = 3  # committed checkpoints kept; older ones are deleted
    resume: str = "auto"  # auto (latest complete in run dir) | none | path to a checkpoint
    async_save: bool = False  # overlap writing with training
    save_at_end: bool = True


@dataclass
class LoggingConfig:
    every_steps: int = 10
    eval_every_steps: int = 100  # 0 disables periodic evaluation
    eval_batches: int = 0  # 0 = the whole validation split
    tensorboard: bool = True
    progress_bar: bool = True
    peak_tflops: float = 0.0  # per device, for MFU; 0 = look up the device, else no MFU


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = ""  # run directory; empty = runs/<name>
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # used by `pretrain slurm submit`

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir or f"runs/{self.run.name}")


# ---------------------------------------------------------------- validation machinery


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to `tp`, or ConfigError naming `key` and the expected type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return _build(tp, value, key)
    if origin is Literal:
        if value not in args:
            fail()
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        fail()
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            fail()
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, bool):
            fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        fail()
    if tp is float:
        if isinstance(value, bool):
            fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        fail()
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        fail()
    if tp is Any:
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {tp!r}")


def _unknown_key(cls: type, name: str, prefix: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    full = f"{prefix}{name}"
    candidates = [f"{prefix}{v}" for v in valid]
    close = difflib.get_close_matches(full, candidates, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(candidates)}"
    return ConfigError(f"unknown config key '{full}' ({hint})")


def _build(cls: type, data: dict, key: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    prefix = f"{key}." if key else ""
    names = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if name not in names:
            raise _unknown_key(cls, str(name), prefix)
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=3e-4' -> (['optim', 'lr'], '3e-4' parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict, cls: type = TrainConfig) -> Any:
    """Validate a nested dict against `cls`, filling defaults."""
    return _build(cls, _merge(to_dict(cls()), data))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the YAML recipe at `path`, then dotted `overrides`; validated."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML: {e}".replace("\n", " ")) from e
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return config_from_dict(data)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
