"""The ViT classifier in transformers' ViTForImageClassification layout.

Our patch embedding is a Linear over patches flattened in (channel, row, column) order, which
is exactly a Conv2d with kernel = stride = patch size read as [width, C, p, p]: a reshape.
The class token, position table (class position first), pre-norm blocks with LayerNorm and
exact-erf GELU, final LayerNorm and the class-token readout are ViT's own.

Folded when exact: muP's attention scale into the query rows and bias; muP's readout
multiplier into the classifier weight; the depth rule's branch multiplier into each
block's attention output and MLP output dense (weight and bias); σReparam into each weight
(export only).
Refused, naming the option: mean pooling (ViTForImageClassification reads the class token),
RMSNorm, SwiGLU, Peri-LN, qk_norm, and model.bias=false (ViT's attention output and MLP
layers always have biases).
"""

from __future__ import annotations

from pretrain.interop.hf_lm import query_mult
from pretrain.interop.plan import ExportRefused, Piece
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import output_mult, residual_mult

MATH_KEYS = ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "hidden_act", "layer_norm_eps", "image_size", "patch_size",
             "num_channels", "qkv_bias")


def check_expressible(m: ModelConfig) -> None:
    refusals = [
        (m.family != "vit", f"model.family={m.family!r} is not a vit"),
        (m.vit.pooling != "cls", "model.vit.pooling=mean: ViTForImageClassification classifies "
                                 "the class token"),
        (m.norm != "layernorm", f"model.norm={m.norm}: HF ViT uses LayerNorm"),
        (m.mlp not in ("auto", "gelu"), f"model.mlp={m.mlp}: HF ViT's MLP is GELU"),
        (m.norm_placement != "pre", f"model.norm_placement={m.norm_placement}: HF ViT is pre-norm"),
        (m.qk_norm, "model.qk_norm: HF ViT has no query/key norms"),
        (not m.bias, "model.bias=false: HF ViT's attention output and MLP layers have biases"),
    ]
    for refused, why in refusals:
        if refused:
            raise ExportRefused(why)


def config_json(m: ModelConfig, special: dict) -> dict:
    check_expressible(m)
    labels = {str(i): f"LABEL_{i}" for i in range(m.vit.num_classes)}
    return {
        "architectures": ["ViTForImageClassification"], "model_type": "vit",
        "hidden_size": m.width, "num_hidden_layers": m.depth, "num_attention_heads": m.num_heads,
        "intermediate_size": int(m.width * m.mlp_ratio), "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": m.dropout,
        "initializer_range": m.init_std, "layer_norm_eps": m.norm_eps,
        "image_size": m.vit.image_size, "patch_size": m.vit.patch_size,
        "num_channels": m.vit.in_channels, "qkv_bias": True, "encoder_stride": m.vit.patch_size,
        "id2label": labels, "label2id": {v: int(k) for k, v in labels.items()},
        "torch_dtype": "float32",
    }


def pieces(m: ModelConfig) -> list[Piece]:
    check_expressible(m)
    d, v = m.width, m.vit
    qm, om, rm = query_mult(m), output_mult(m), residual_mult(m)
    emb = "vit.embeddings."
    out = [Piece("cls_token", emb + "cls_token"),
           Piece("pos_embed", emb + "position_embeddings"),
           Piece("patch_embed.weight", emb + "patch_embeddings.projection.weight",
                 shape=(d, v.in_channels, v.patch_size, v.patch_size)),
           Piece("patch_embed.bias", emb + "patch_embeddings.projection.bias")]
    for i in range(m.depth):
        ours, theirs = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            qkv = ours + f"attn.qkv.{kind}"
            out += [Piece(ours + f"norm1.{kind}", theirs + f"layernorm_before.{kind}"),
                    Piece(qkv, theirs + f"attention.attention.query.{kind}", slice(0, d), qm),
                    Piece(qkv, theirs + f"attention.attention.key.{kind}", slice(d, 2 * d)),
                    Piece(qkv, theirs + f"attention.attention.value.{kind}", slice(2 * d, 3 * d)),
                    Piece(ours + f"attn.proj.{kind}", theirs + f"attention.output.dense.{kind}",
                          mult=rm),  # the depth rule's branch multiplier, weight and bias
                    Piece(ours + f"norm2.{kind}", theirs + f"layernorm_after.{kind}"),
                    Piece(ours + f"mlp.fc1.{kind}", theirs + f"intermediate.dense.{kind}"),
                    Piece(ours + f"mlp.fc2.{kind}", theirs + f"output.dense.{kind}", mult=rm)]
    out += [Piece("norm.weight", "vit.layernorm.weight"), Piece("norm.bias", "vit.layernorm.bias"),
            Piece("head.weight", "classifier.weight", mult=om),
            Piece("head.bias", "classifier.bias")]  # the multiplier scales the input only
    return out
