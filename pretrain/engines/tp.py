"""Tensor parallelism (Megatron-style, without sequence parallelism) applied from outside.

Every block's attention and MLP are split over the "tp" mesh: the input projection
column-wise (each rank computes its heads / its slice of the MLP hidden units), the output
projection row-wise (partial sums all-reduced to a replicated output). Everything between
(norms, residual stream, adaLN modulation, embeddings, heads) stays replicated on the TP
ranks, computed identically on each, so its gradients agree without communication; the
column-wise input's backward all-reduces the gradient of the replicated activation.

Fused projections keep their single-device layout: `qkv` is [q; k; v] stacked and SwiGLU's
`fc1` is [gate; value]. Their weights are split by contiguous rows like any column-wise layer
(so FSDP2 and DCP see ordinary Shard(0) DTensors and checkpoints move between meshes), and the
output is redistributed to `_StridedShard(-1, split_factor=k)`, a rank's slice of each of the
k parts, so the model's own `view`/`chunk` find whole heads. That redistribution is one
all-gather of the fused output per layer (its backward a reduce-scatter): the price of not
permuting the weights; a head-interleaved weight layout would remove it.

Sequence parallelism and a vocabulary-parallel loss are not applied (see the README's mesh
section): the replicated regions are the norms and embeddings, small at the widths here.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from pretrain import compat
from pretrain.models.blocks import MLP, Attention

FEATURE_DIM = 2  # activations are [batch, tokens, features] in every family


def stacked_colwise(parts: int) -> ColwiseParallel:
    """Column-wise split of a Linear whose output stacks `parts` equal blocks (qkv, SwiGLU)."""
    if parts == 1:
        return ColwiseParallel()
    return ColwiseParallel(output_layouts=compat.strided_shard(FEATURE_DIM, parts))


def tp_plan(model: nn.Module, tp: int) -> dict[str, object]:
    """Styles for every Attention and MLP under `model.blocks`; sets each attention's local
    head count (the model reshapes by it)."""
    plan: dict[str, object] = {}
    for name, module in model.blocks.named_modules(prefix="blocks"):
        if isinstance(module, Attention):
            plan[f"{name}.qkv"] = stacked_colwise(3)
            plan[f"{name}.proj"] = RowwiseParallel()
            module.num_heads //= tp
        elif isinstance(module, MLP):
            plan[f"{name}.fc1"] = stacked_colwise(2 if module.kind == "swiglu" else 1)
            plan[f"{name}.fc2"] = RowwiseParallel()
    return plan


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Split every block's projections over `tp_mesh` (in place; names are unchanged)."""
    parallelize_module(model, tp_mesh, tp_plan(model, tp_mesh.size()))
