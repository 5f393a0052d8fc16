"""The DiT in diffusers' DiTTransformer2DModel layout.

The same network, written differently in three places, each converted exactly:
- diffusers keeps a copy of the timestep MLP and class table in every block's AdaLayerNormZero
  (and uses block 0's for the output layer); we keep one: export writes it into every block,
  import requires the copies equal.
- diffusers' 2-D sine-cosine position table puts the column (x) features in the first half of
  the channels, ours the row (y) features. The position table is a fixed buffer, so the
  residual stream is relabelled instead: every weight that writes the stream has its output
  rows swapped by halves, every weight that reads it its input columns; LayerNorm without
  affine parameters and the per-channel adaLN modulation are indifferent to the relabelling.
- the output projection emits each patch as (row, column, channel) there, (channel, row,
  column) here: a row permutation. With model.dit.learn_sigma both emit 2C channels (noise,
  then the variance values), diffusers' `out_channels = 2 * in_channels`, as DiT's release.

Folded when exact: muP's attention scale into the query rows and bias, the readout multiplier
into proj_out_2, the depth rule's branch multiplier into to_out.0 and ff.net.2 (weight and
bias), σReparam into each weight (export only). Refused, naming the option:
model.dit.time_freq_shift=0 (diffusers embeds timesteps at 10000^(-i/127), the original DiT
at 10000^(-i/128); train with model.dit.time_freq_shift=1 to export), SwiGLU,
mlp_ratio != 4, RMSNorm, Peri-LN, qk_norm, model.bias=false.
"""

from __future__ import annotations

import torch

from pretrain.interop.hf_lm import query_mult
from pretrain.interop.plan import ExportRefused, Piece
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import output_mult, residual_mult

CHECKED_WITH = "0.36.0"  # the diffusers version whose DiTTransformer2DModel the tests load
NORM_EPS = 1e-6  # the DiT blocks' LayerNorm eps

MATH_KEYS = ("_class_name", "num_attention_heads", "attention_head_dim", "in_channels",
             "out_channels", "num_layers", "attention_bias", "sample_size", "patch_size",
             "activation_fn", "num_embeds_ada_norm", "norm_type", "norm_elementwise_affine",
             "norm_eps")
DEFAULTS = {"out_channels": None, "attention_bias": True, "activation_fn": "gelu-approximate",
            "norm_type": "ada_norm_zero", "norm_elementwise_affine": False, "norm_eps": 1e-5}


def check_expressible(m: ModelConfig) -> None:
    refusals = [
        (m.family != "dit", f"model.family={m.family!r} is not a dit"),
        (m.dit.time_freq_shift != 1,
         f"model.dit.time_freq_shift={m.dit.time_freq_shift}: diffusers' DiTTransformer2DModel "
         "embeds timesteps at frequencies 10000^(-i/127); a model trained with "
         "model.dit.time_freq_shift=1 uses those"),
        (m.mlp not in ("auto", "gelu"), f"model.mlp={m.mlp}: diffusers' DiT MLP is GELU"),
        (m.mlp_ratio != 4.0, f"model.mlp_ratio={m.mlp_ratio}: diffusers' DiT MLP is 4x wide"),
        (m.norm != "layernorm", f"model.norm={m.norm}: diffusers' DiT uses LayerNorm"),
        (m.norm_placement != "pre", f"model.norm_placement={m.norm_placement}: diffusers' DiT "
                                    "has no sublayer output norms"),
        (m.qk_norm, "model.qk_norm: diffusers' DiT block has no query/key norms"),
        (not m.bias, "model.bias=false: diffusers' DiT attention output and MLP have biases"),
    ]
    for refused, why in refusals:
        if refused:
            raise ExportRefused(why)


def config_json(m: ModelConfig, special: dict) -> dict:
    check_expressible(m)
    return {
        "_class_name": "DiTTransformer2DModel", "_diffusers_version": CHECKED_WITH,
        "num_attention_heads": m.num_heads, "attention_head_dim": m.width // m.num_heads,
        "in_channels": m.dit.in_channels, "out_channels": _out_channels(m) if
        m.dit.learn_sigma else None, "num_layers": m.depth,
        "dropout": 0.0, "norm_num_groups": 32, "attention_bias": True,
        "sample_size": m.dit.image_size, "patch_size": m.dit.patch_size,
        "activation_fn": "gelu", "num_embeds_ada_norm": m.dit.num_classes,
        "upcast_attention": False, "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False, "norm_eps": NORM_EPS,
    }


def _stream(d: int) -> torch.Tensor:
    """Their residual channel j is our channel perm[j]: the two halves swapped."""
    return torch.cat([torch.arange(d // 2, d), torch.arange(0, d // 2)])


def _chunks(perm: torch.Tensor, n: int) -> torch.Tensor:
    """`perm` applied within each of n stacked chunks (adaLN's shift/scale/gate rows)."""
    d = perm.numel()
    return torch.cat([k * d + perm for k in range(n)])


def _out_channels(m: ModelConfig) -> int:
    return m.dit.in_channels * (2 if m.dit.learn_sigma else 1)


def _patch_rows(m: ModelConfig) -> torch.Tensor:
    """Their output row (row, col, channel) of a patch is our row (channel, row, col)."""
    c, p = _out_channels(m), m.dit.patch_size
    return torch.arange(c * p * p).view(c, p, p).permute(1, 2, 0).reshape(-1)


def pieces(m: ModelConfig) -> list[Piece]:
    check_expressible(m)
    d, dit = m.width, m.dit
    s = _stream(d)
    qm, rm = query_mult(m), residual_mult(m)
    out = [Piece("x_embed.weight", "pos_embed.proj.weight", s,
                 shape=(d, dit.in_channels, dit.patch_size, dit.patch_size)),
           Piece("x_embed.bias", "pos_embed.proj.bias", s)]
    for i in range(m.depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = theirs + "norm1.emb."
        out += [Piece("t_embed.mlp.0.weight", emb + "timestep_embedder.linear_1.weight"),
                Piece("t_embed.mlp.0.bias", emb + "timestep_embedder.linear_1.bias"),
                Piece("t_embed.mlp.2.weight", emb + "timestep_embedder.linear_2.weight"),
                Piece("t_embed.mlp.2.bias", emb + "timestep_embedder.linear_2.bias"),
                Piece("y_embed.weight", emb + "class_embedder.embedding_table.weight"),
                Piece(ours + "modulation.weight", theirs + "norm1.linear.weight", _chunks(s, 6)),
                Piece(ours + "modulation.bias", theirs + "norm1.linear.bias", _chunks(s, 6))]
        qkv, attn = ours + "attn.qkv.", theirs + "attn1."
        for j, (name, mult) in enumerate((("to_q", qm), ("to_k", 1.0), ("to_v", 1.0))):
            rows = slice(j * d, (j + 1) * d)
            out += [Piece(qkv + "weight", attn + f"{name}.weight", rows, mult, cols=s),
                    Piece(qkv + "bias", attn + f"{name}.bias", rows, mult)]
        out += [Piece(ours + "attn.proj.weight", attn + "to_out.0.weight", s, rm),
                Piece(ours + "attn.proj.bias", attn + "to_out.0.bias", s, rm),
                Piece(ours + "mlp.fc1.weight", theirs + "ff.net.0.proj.weight", cols=s),
                Piece(ours + "mlp.fc1.bias", theirs + "ff.net.0.proj.bias"),
                Piece(ours + "mlp.fc2.weight", theirs + "ff.net.2.weight", s, rm),
                Piece(ours + "mlp.fc2.bias", theirs + "ff.net.2.bias", s, rm)]
    rows, om = _patch_rows(m), output_mult(m)
    out += [Piece("final.modulation.weight", "proj_out_1.weight", _chunks(s, 2)),
            Piece("final.modulation.bias", "proj_out_1.bias", _chunks(s, 2)),
            Piece("final.linear.weight", "proj_out_2.weight", rows, om, cols=s),
            Piece("final.linear.bias", "proj_out_2.bias", rows)]  # multiplier: input only
    return out
