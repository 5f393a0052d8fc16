"""Vision Transformer classifier (Dosovitskiy et al. 2021) on the shared block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.blocks import (
    TransformerBlock,
    block_matmul_flops,
    model_norm,
    patchify,
    resolve_mlp,
)
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import param_roles


class ViT(nn.Module):
    """Patchify (a linear map of flattened patches) -> + position embedding -> blocks -> pool ->
    head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vit
        if v.image_size % v.patch_size:
            raise ValueError(
                f"model.vit.image_size={v.image_size} is not divisible by patch_size={v.patch_size}"
            )
        self.cfg = cfg
        self.patch_size = v.patch_size
        self.num_patches = (v.image_size // v.patch_size) ** 2
        self.num_tokens = self.num_patches + (1 if v.pooling == "cls" else 0)
        patch_dim = v.in_channels * v.patch_size**2
        self.patch_embed = nn.Linear(patch_dim, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, cfg.width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if v.pooling == "cls" else None
        self.mlp_kind = resolve_mlp(cfg, "gelu")
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, mlp=self.mlp_kind) for _ in range(cfg.depth)
        )
        self.norm = model_norm(cfg, cfg.width)
        self.head = nn.Linear(cfg.width, v.num_classes)
        self.output_mult = 1.0  # readout input multiplier; muP sets output_mult/width_mult

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, num_patches, C*p*p]."""
        v = self.cfg.vit
        return patchify(images, self.patch_size, v.in_channels, v.image_size, "model.vit")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.patchify(images))
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.head(pooled * self.output_mult)  # as MuReadout: the bias is not scaled

    def param_kinds(self) -> dict[str, str]:
        """muP role of every parameter: embedding | hidden | readout | vector."""
        embeddings = {"patch_embed.weight", "pos_embed", "cls_token"}
        return param_roles(self, embeddings, readouts={"head.weight"})

    def embedding_param_names(self) -> set[str]:
        return {n for n in ("patch_embed.weight", "patch_embed.bias", "pos_embed", "cls_token")}

    def flops_per_sample(self) -> int:
        """Training FLOPs per image: 3x the forward matmuls (backward = 2x forward).

        Counted: patch embedding, every block's projections, MLP and attention matmuls over all
        tokens, and the classifier head. Not counted: norms, softmax, GELU, biases, adds.
        """
        c = self.cfg
        patch_dim = self.patch_embed.in_features
        fwd = 2 * self.num_patches * patch_dim * c.width
        fwd += c.depth * block_matmul_flops(c, self.num_tokens, mlp=self.mlp_kind)
        fwd += 2 * c.width * c.vit.num_classes
        return 3 * fwd


def vit_loss(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy over valid labels, plus sums for evaluation (loss, correct, count).
    With "soft_label" in the batch (mixup/cutmix/label smoothing), against those soft targets;
    accuracy still counts the sample's own label."""
    logits = model(batch["image"])
    labels = batch["label"]
    valid = labels != -100
    if "soft_label" in batch:
        per_row = -(batch["soft_label"] * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        loss_sum = (per_row * valid).sum()
    else:
        loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    count = valid.sum()
    correct = ((logits.argmax(-1) == labels) & valid).sum()
    stats = {"loss_sum": loss_sum.detach(), "correct": correct, "count": count}
    return loss_sum / count.clamp(min=1), stats
