"""Decoder-only language model on the shared block: token embedding, causal attention with
RoPE, SwiGLU MLP (by default), final norm, tied or untied readout.

Packed sequences: when the batch carries `doc_ids` (which document each position belongs to)
attention is block-diagonal causal, so a token never sees another document; `position_ids`
restart RoPE positions per document. The data pipeline marks targets that would cross a
boundary with IGNORE_INDEX, so a packed row has the same loss as its documents run one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.attention.flex_attention import BlockMask

from pretrain.models.blocks import (
    TransformerBlock,
    block_matmul_flops,
    document_block_mask,
    model_norm,
    resolve_mlp,
    rope_tables,
)
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import param_roles

IGNORE_INDEX = -100


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids -> boolean [B, 1, T, T]: query i may attend key j iff j <= i and
    both lie in the same document."""
    t = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        lm = cfg.lm
        self.cfg = cfg
        self.seq_len, self.vocab_size = lm.seq_len, lm.vocab_size
        self.rope_dim = cfg.width // cfg.num_heads
        self.mlp_kind = resolve_mlp(cfg, "swiglu")
        self.tok_embed = nn.Embedding(lm.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, causal=True, mlp=self.mlp_kind) for _ in range(cfg.depth)
        )
        self.norm = model_norm(cfg, cfg.width)
        self.head = (
            None if lm.tie_embeddings else nn.Linear(cfg.width, lm.vocab_size, bias=cfg.bias)
        )
        self.output_mult = 1.0  # readout multiplier; muP sets it

    def forward(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab] (float32 unless autocast says otherwise)."""
        b, t = tokens.shape
        if t > self.seq_len:
            raise ValueError(
                f"sequence of {t} tokens is longer than model.lm.seq_len={self.seq_len} "
                "(match data.seq_len)"
            )
        if position_ids is None:
            position_ids = torch.arange(t, device=tokens.device).expand(b, t)
        rope = rope_tables(position_ids, self.rope_dim, self.cfg.lm.rope_theta)
        mask = self.document_mask(doc_ids) if doc_ids is not None else None
        x = self.tok_embed(tokens)
        for block in self.blocks:
            x = block(x, mask, rope)
        x = self.norm(x)
        x = x * self.output_mult  # readout multiplier on the input, as MuReadout: not on a bias
        return self.head(x) if self.head is not None else F.linear(x, self.tok_embed.weight)

    def document_mask(self, doc_ids: torch.Tensor) -> torch.Tensor | BlockMask:
        """FlexAttention's block mask on CUDA (flash-level memory); the dense boolean mask on
        other devices (no FlexAttention backward there), with dropout (FlexAttention has none)
        or while attention entropy is recorded (it reads the dense mask)."""
        recording = any(getattr(m, "record_entropy", False) for m in self.modules())
        if doc_ids.is_cuda and not self.cfg.dropout and not recording:
            return document_block_mask(doc_ids)
        return document_causal_mask(doc_ids)

    def param_kinds(self) -> dict[str, str]:
        """muP role of every parameter. A tied embedding/readout matrix is named once
        (tok_embed.weight) and takes the embedding role."""
        return param_roles(self, embeddings={"tok_embed.weight"}, readouts={"head.weight"})

    def embedding_param_names(self) -> set[str]:
        return {"tok_embed.weight"}

    def flops_per_sample(self, seq_len: int | None = None) -> int:
        """Training FLOPs per sequence of `seq_len` (default lm.seq_len) tokens: 3x the forward
        matmuls.

        Counted: every block's projections, MLP and both attention matmuls over all seq_len keys
        per query (the dense causal kernel's work, masked half included), and the readout.
        Not counted: the embedding lookup, norms, softmax, RoPE, SwiGLU/GELU, biases, adds.
        """
        c, t = self.cfg, seq_len or self.seq_len
        fwd = c.depth * block_matmul_flops(c, t, mlp=self.mlp_kind)
        fwd += 2 * t * c.width * self.vocab_size
        return 3 * fwd


def lm_batch_cost(model: DecoderLM, shapes: dict) -> tuple[int, int]:
    """(tokens, training FLOPs) of a [B, T] token batch: its own T, whatever lm.seq_len says."""
    b, t = shapes["tokens"]
    return b * t, b * model.flops_per_sample(t)


def lm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over valid targets, plus sums (loss, correct, count) for
    evaluation; perplexity is exp(loss_sum / count)."""
    logits = model(batch["tokens"], batch.get("position_ids"), batch.get("doc_ids"))
    targets = batch["targets"]
    valid = targets != IGNORE_INDEX
    loss_sum = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if isinstance(loss_sum, DTensor):  # vocabulary-parallel logits: the sum is replicated
        loss_sum = loss_sum.full_tensor()
    count = valid.sum()
    stats = {"loss_sum": loss_sum.detach(), "count": count}
    if not torch.is_grad_enabled():  # evaluation; a training step never reads the accuracy
        stats["correct"] = ((predicted_tokens(logits) == targets) & valid).sum()
    return loss_sum / count.clamp(min=1), stats


def predicted_tokens(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the vocabulary, [B, T, V] -> [B, T]. Logits split by vocabulary over ranks
    (a DTensor from tensor parallelism's readout) are not gathered: each rank's best token and
    its logit are ([B, T] each), and the first rank holding the maximum wins (the ranks hold
    consecutive equal slices, so that is argmax's first-index rule)."""
    if not isinstance(logits, DTensor):
        return logits.argmax(-1)
    last = logits.dim() - 1
    (mesh_dim,) = [i for i, p in enumerate(logits.placements)
                   if p.is_shard() and p.dim % logits.dim() == last]
    local = logits.to_local()
    value, index = local.max(-1, keepdim=True)
    index = index + local.shape[-1] * logits.device_mesh.get_local_rank(mesh_dim)

    def gathered(t: torch.Tensor) -> torch.Tensor:  # [B, T, 1] per rank -> [B, T, ranks]
        return DTensor.from_local(t, logits.device_mesh, logits.placements,
                                  run_check=False).full_tensor()

    best_rank = gathered(value).argmax(-1, keepdim=True)
    return gathered(index).gather(-1, best_rank).squeeze(-1)
