"""The DeepSpeed JSON config, derived from the `parallel`, `optim` and batch-size settings.

Everything the rest of the config already says (batch sizes, accumulation, clipping, bf16) is
translated here, so a recipe switches backend with one key; `parallel.deepspeed.extra` is merged
last, for DeepSpeed knobs not modelled in `DeepSpeedConfig` (pretrain/parallel_config.py).
"""

from __future__ import annotations

from pretrain.optim_config import OptimConfig
from pretrain.overrides import merge
from pretrain.parallel_config import ParallelConfig


def ds_config(
    parallel: ParallelConfig, optim: OptimConfig, global_batch_size: int, world_size: int
) -> dict:
    """The DeepSpeed JSON config for this run.

    The optimizer is the project's torch AdamW (passed to deepspeed.initialize with its param
    groups), so no optimizer or scheduler section: DeepSpeed never JIT-builds FusedAdam, and the
    trainer sets each group's lr (schedule x lr_mult) itself every step.
    """
    accum = optim.grad_accum
    gbs = global_batch_size
    if gbs % (world_size * accum):
        raise ValueError(
            f"data.global_batch_size={gbs} is not divisible by "
            f"world_size*grad_accum={world_size}*{accum}"
        )
    config = {
        "train_batch_size": gbs,
        "train_micro_batch_size_per_gpu": gbs // (world_size * accum),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(optim.grad_clip),
        "bf16": {"enabled": parallel.mixed_precision == "bf16"},
        "zero_optimization": {"stage": int(parallel.deepspeed.zero_stage)},
        "zero_allow_untested_optimizer": True,  # torch.optim.AdamW is the optimizer that runs
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "Ignore"},
    }
    return merge(config, parallel.deepspeed.extra)
