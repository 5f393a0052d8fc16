"""The `parallel` section: backend and its knobs, with DeepSpeed's own sub-section.

Everything else DeepSpeed needs (batch sizes, accumulation, clipping, bf16) is derived from the
other sections by `pretrain/engines/deepspeed_config.py`, so a recipe switches backend with one
key. `deepspeed.extra` is merged last, for DeepSpeed knobs not modelled here (bucket sizes,
offload...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[1, 2, 3] = 2  # 1: optimizer state sharded; 2: + gradients; 3: + parameters
    # DeepSpeed's shared-memory CPU all-reduce is a C++ op JIT-built at first use (~50 s on 2
    # cores, cached in TORCH_EXTENSIONS_DIR); off uses gloo, which is what FSDP2 uses on CPU.
    shm_comm: bool = False
    # merged into the generated DeepSpeed config (pretrain/engines/deepspeed_config.py)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MeshConfig:
    """The device mesh (pretrain/mesh.py): dp_replicate x dp_shard x tp = world size.

    dp_replicate > 1 is HSDP (shard inside a group, replicate across groups: a node each, so
    parameter all-gathers stay on the fast links); tp > 1 splits each block's matrices (tensor
    parallelism). dp_shard=-1 takes the ranks left over, so the default is today's flat run.
    """

    dp_replicate: int = 1
    dp_shard: int = -1  # -1: world_size // (dp_replicate * tp)
    tp: int = 1
    # TP with sequence parallelism: the norms and residual stream between a block's attention
    # and MLP split by tokens over the tp ranks (LM and ViT; tokens divisible by tp)
    sequence_parallel: bool = False


@dataclass
class ParallelConfig:
    backend: Literal["single", "ddp", "fsdp2", "deepspeed"] = "single"
    # "auto" settings are resolved at startup from the device (pretrain/device_defaults.py: on
    # on a GPU, off on a CPU) and the resolved values are saved in the run's config.yaml
    mixed_precision: Literal["auto", "none", "bf16"] = "auto"  # fsdp2: bf16 params, fp32 reduce
    activation_checkpointing: bool = False
    compile: bool | Literal["auto"] = "auto"  # torch.compile each block
    tf32: bool | Literal["auto"] = "auto"  # TF32 tensor cores for fp32 matmuls and convolutions
    reshard_after_forward: bool = True  # fsdp2
    mesh: MeshConfig = field(default_factory=MeshConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
