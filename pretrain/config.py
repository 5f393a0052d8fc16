"""Typed configuration: TrainConfig assembled from leaf sections, YAML recipes, dotted overrides.

Each section is a dataclass next to what it configures (`optim` in pretrain/optim_config.py,
`parallel` in pretrain/parallel_config.py, `slurm` in launch/slurm_config.py, ...); those modules
import no other project module, so this one depends on no engine, launcher or trainer code.
A recipe is YAML whose nested keys mirror the sections. `load_config` starts from the defaults,
merges the recipe, then the `key.sub=value` overrides (pretrain/overrides.py, the one parser),
and validates every key and type: an unknown key fails naming the closest valid key; a wrong
type names the key and the type expected. The resolved config (every default filled in) is
saved into the run directory.
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
from launch.slurm_config import SlurmConfig
from pretrain.checkpoint_config import CheckpointConfig
from pretrain.metrics_config import LoggingConfig
from pretrain.models.config import ModelConfig, ViTConfig
from pretrain.models.mup_config import MupConfig
from pretrain.optim_config import OptimConfig
from pretrain.overrides import ConfigError, merge, parse_override, read_yaml_file, set_dotted
from pretrain.parallel_config import DeepSpeedConfig, ParallelConfig
from pretrain.run_config import RunConfig
from pretrain.schedule_config import ScheduleConfig

__all__ = [
    "ConfigError", "TrainConfig", "ModelConfig", "ViTConfig", "MupConfig", "DataConfig",
    "OptimConfig", "ScheduleConfig", "ParallelConfig", "DeepSpeedConfig", "CheckpointConfig",
    "LoggingConfig", "RunConfig", "SlurmConfig", "load_config", "parse_override",
]  # fmt: skip


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
        if not args:
            return value
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
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
        if isinstance(value, str):  # "1000", or "1e3" (YAML 1.1 reads 1e3 as a string)
            try:
                return int(value)
            except ValueError:
                pass
            try:
                number = float(value)
            except ValueError:
                fail()
            if number.is_integer():
                return int(number)
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
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own range check (__post_init__), one line
        raise ConfigError(str(e)) from e


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict, cls: type = TrainConfig) -> Any:
    """Validate a nested dict against `cls`, filling defaults."""
    return _build(cls, merge(to_dict(cls()), data))


def load_config(path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the YAML recipe at `path`, then dotted `overrides`; validated."""
    data: dict = {}
    if path is not None:
        data = read_yaml_file(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections, "
                              f"got {type(data).__name__}")
    for text in overrides:
        set_dotted(data, *parse_override(text))
    return check_across_sections(config_from_dict(data))


# in-memory datasets whose rows are data.seq_len tokens (sharded sets take it from the manifest;
# the model's forward refuses a longer row there)
MEMORY_TOKEN_DATASETS = ("synthetic_tokens", "text")


def check_across_sections(cfg: TrainConfig) -> TrainConfig:
    """Constraints between sections, each a one-line ConfigError at load."""
    lm_context = cfg.model.lm.seq_len
    memory_tokens = cfg.data.format == "memory" and cfg.data.name in MEMORY_TOKEN_DATASETS
    if cfg.model.family == "lm" and memory_tokens and cfg.data.seq_len > lm_context:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} is longer than the LM's context "
                          f"model.lm.seq_len={lm_context}: raise model.lm.seq_len or lower "
                          "data.seq_len")
    if (cfg.optim.ema_decay > 0 and cfg.parallel.backend == "deepspeed"
            and cfg.parallel.deepspeed.zero_stage == 3):
        raise ConfigError("optim.ema_decay is not supported by DeepSpeed ZeRO-3 (its gathered "
                          "and persistent parameters); use ZeRO-1/2 or fsdp2")
    if cfg.checkpoint.agree_every_steps < 1:
        raise ConfigError("checkpoint.agree_every_steps must be >= 1")
    if cfg.run.collective_timeout_s <= 0:
        raise ConfigError("run.collective_timeout_s must be > 0")
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
