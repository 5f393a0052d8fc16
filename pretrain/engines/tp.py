"""Tensor parallelism (Megatron-style, without sequence parallelism) applied from outside.

Every block's attention and MLP are split over the "tp" mesh: the input projection
column-wise (each rank computes its heads / its slice of the MLP hidden units), the output
projection row-wise (partial sums all-reduced to a replicated output). Everything between
(norms, residual stream, adaLN modulation, ViT/DiT embeddings and heads) stays replicated on
the TP ranks, computed identically on each, so its gradients agree without communication; the
column-wise input's backward all-reduces the gradient of the replicated activation.

Fused projections keep their single-device layout: `qkv` is [q; k; v] stacked and SwiGLU's
`fc1` is [gate; value]. Their weights are split by contiguous rows like any column-wise layer
(so FSDP2 and DCP see ordinary Shard(0) DTensors and checkpoints move between meshes), and the
output is redistributed to `_StridedShard(-1, split_factor=k)`, a rank's slice of each of the
k parts, so the model's own `view`/`chunk` find whole heads. That redistribution is one
all-gather of the fused output per layer (its backward a reduce-scatter): the price of not
permuting the weights; a head-interleaved weight layout would remove it.

With `parallel.mesh.sequence_parallel` (LM and ViT) the regions between the projections are
split by tokens instead of replicated (`sequence_parallel_plan`): the row-wise outputs
reduce-scatter, the next input all-gathers, norms hold a token slice's activations. DiT's
adaLN modulation is a per-sample parameter path inside the blocks, so it stays without SP.

The LM's token embedding and readout are split by vocabulary (`vocab_parallel_plan`): each TP
rank holds V/tp rows of the embedding (a lookup outside its rows gives zeros; the partial
embeddings are all-reduced) and computes V/tp columns of the logits, which stay a DTensor split
on the vocabulary. The cross-entropy runs on those shards under torch's `loss_parallel`
(the engine's `loss_context`): a max and a sum of exponentials all-reduced per token, so the
[B, T, V] logits are never gathered. A tied readout multiplies by the same vocabulary-split
embedding matrix. ViT and DiT heads are small (classes, patch pixels) and stay replicated.

Compiled blocks (parallel.compile, applied after TP) run with one graph break, at SwiGLU's
fc2, where the strided fused output enters the row-wise projection.
"""

from __future__ import annotations

import contextlib

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)

from pretrain import compat
from pretrain.models.blocks import MLP, Attention, TransformerBlock

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


def sequence_parallel_plan(model: nn.Module) -> dict[str, object]:
    """Inside each TransformerBlock the residual stream is split by tokens (Shard(1)): norms
    run on their tokens, attention and MLP gather the tokens at their input and reduce-scatter
    at their output (instead of all-reducing). Between blocks the stream stays split; it is
    split at the first block's input and gathered at the last one's output, so embeddings,
    final norm and head see whole sequences as without SP."""
    tokens = getattr(model, "num_tokens", None) or getattr(model, "seq_len", None)
    if not isinstance(model.blocks[0], TransformerBlock) or tokens is None:
        raise ValueError(f"parallel.mesh.sequence_parallel is not supported for "
                         f"{type(model).__name__} (its blocks are conditioned per sample)")
    plan: dict[str, object] = {}
    block_args = 3 if model.blocks[0].attn.causal else 1  # LM: (x, mask, rope); ViT: (x,)
    rest = (None,) * (block_args - 1)
    plan["blocks.0"] = PrepareModuleInput(input_layouts=(Replicate(), *rest),
                                          desired_input_layouts=(Shard(1), *rest),
                                          use_local_output=True)
    for i, block in enumerate(model.blocks):
        name = f"blocks.{i}"
        for norm in ("norm1", "norm2", "attn_out_norm", "mlp_out_norm"):
            if not isinstance(getattr(block, norm), nn.Identity):
                plan[f"{name}.{norm}"] = SequenceParallel(use_local_output=True)
        plan[f"{name}.attn"] = PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                                  desired_input_layouts=(Replicate(), None, None),
                                                  use_local_output=True)
        plan[f"{name}.attn.proj"] = RowwiseParallel(output_layouts=Shard(1))
        plan[f"{name}.mlp"] = PrepareModuleInput(input_layouts=(Shard(1),),
                                                 desired_input_layouts=(Replicate(),),
                                                 use_local_output=True)
        plan[f"{name}.mlp.fc2"] = RowwiseParallel(output_layouts=Shard(1))
    return plan


def has_vocab_head(model: nn.Module) -> bool:
    """An LM: a token embedding whose rows are also (or beside) the readout's vocabulary."""
    return isinstance(getattr(model, "tok_embed", None), nn.Embedding)


def vocab_parallel_plan(model: nn.Module) -> dict[str, object]:
    """Embedding rows and readout columns split by vocabulary; the logits leave the model as a
    DTensor sharded on the vocabulary (Shard(-1)) for `loss_parallel`. Tied: the final norm's
    output becomes a replicated DTensor so `F.linear(x, tok_embed.weight)` multiplies it by
    the vocabulary-split matrix (a plain tensor and a DTensor do not mix)."""
    plan: dict[str, object] = {
        "tok_embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())}
    if model.head is not None:
        plan["head"] = ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)
    else:
        plan["norm"] = PrepareModuleOutput(output_layouts=Replicate(),
                                           desired_output_layouts=Replicate(),
                                           use_local_output=False)
    return plan


def loss_context(vocab_parallel: bool) -> contextlib.AbstractContextManager:
    """Where a step's forward and backward run: `loss_parallel` for vocabulary-split logits
    (its cross-entropy and that one's backward work on the shards), else nothing."""
    return loss_parallel() if vocab_parallel else contextlib.nullcontext()


def check_tokens_split(model: nn.Module, tp: int) -> None:
    tokens = getattr(model, "num_tokens", None) or getattr(model, "seq_len", 0)
    if tokens % tp:
        raise ValueError(f"parallel.mesh.sequence_parallel: {tokens} tokens per sample do not "
                         f"split over tp={tp} (ViT: patches + cls token; LM: model.lm.seq_len)")


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool = False) -> bool:
    """Split every block's projections over `tp_mesh` (in place; names are unchanged), an
    LM's embedding and readout by vocabulary, and with `sequence_parallel` the tokens between
    the projections. Returns whether the logits come out vocabulary-parallel (the loss then
    runs under `loss_context(True)`)."""
    plan = tp_plan(model, tp_mesh.size())
    vocab_parallel = has_vocab_head(model)
    if vocab_parallel:
        plan |= vocab_parallel_plan(model)
    if sequence_parallel:
        sp_plan = sequence_parallel_plan(model)  # refuses a family it does not fit first
        check_tokens_split(model, tp_mesh.size())
        plan |= sp_plan  # row-wise outputs reduce-scatter to tokens
    parallelize_module(model, tp_mesh, plan)
    if sequence_parallel:  # the last block gathers the tokens (a second hook on that module)
        last = f"blocks.{len(model.blocks) - 1}"
        parallelize_module(model, tp_mesh, {last: PrepareModuleOutput(
            output_layouts=Shard(1), desired_output_layouts=Replicate())})
    return vocab_parallel
