"""Typed DeepSpeed settings (`parallel.deepspeed.*`), used when parallel.backend=deepspeed.

Everything that the rest of the config already says (batch sizes, accumulation, clipping, bf16,
optimizer, LR schedule) is derived from it by `ds_config`, so a recipe switches backend with one
key. `extra` is merged last, for DeepSpeed knobs not modelled here (bucket sizes, offload...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pretrain.config import TrainConfig


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[1, 2, 3] = 2  # 1: optimizer state sharded; 2: + gradients; 3: + parameters
    # DeepSpeed's shared-memory CPU all-reduce is a C++ op JIT-built at first use (~50 s on 2
    # cores, cached in TORCH_EXTENSIONS_DIR); off uses gloo, which is what FSDP2 uses on CPU.
    shm_comm: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the generated DeepSpeed config


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def ds_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed JSON config for this run.

    The optimizer is the project's torch AdamW (passed to deepspeed.initialize with its param
    groups), so no optimizer or scheduler section: DeepSpeed never JIT-builds FusedAdam, and the
    trainer sets each group's lr (schedule x lr_mult) itself every step.
    """
    accum = cfg.optim.grad_accum
    gbs = cfg.data.global_batch_size
    if gbs % (world_size * accum):
        raise ValueError(f"data.global_batch_size={gbs} is not divisible by world_size*grad_accum={world_size}*{accum}")
    d = cfg.parallel.deepspeed
    config = {
        "train_batch_size": gbs,
        "train_micro_batch_size_per_gpu": gbs // (world_size * accum),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(cfg.optim.grad_clip),
        "bf16": {"enabled": cfg.parallel.mixed_precision == "bf16"},
        "zero_optimization": {"stage": int(d.zero_stage)},
        "zero_allow_untested_optimizer": True,  # torch.optim.AdamW is the optimizer that runs
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "Ignore"},
    }
    return _merge(config, d.extra)
