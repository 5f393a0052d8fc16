"""The ViT classifier in timm's `vision_transformer.VisionTransformer` layout (`--format timm`).

A folder `timm.create_model("local-dir:FOLDER", pretrained=True)` builds offline: config.json as
timm's `save_for_hf` writes it (architecture, num_classes, model_args, pretrained_cfg) and one
`model.safetensors` (timm reads a single file, not shards). The registry has no size-free ViT
name, so the architecture is `vit_base_patch16_224` and `model_args` carry every dimension.

Same math as ours: patch embedding = a Conv2d read as [width, C, p, p] (a reshape of our
Linear over (channel, row, column) patches), fused qkv in the same row order, exact-erf GELU,
pre-norm blocks, the class token (global_pool=token) or the mean of the normed tokens
(global_pool=avg with fc_norm=false), qk_norm per head before the product.
Folded when exact: muP's readout multiplier into head.weight, the depth rule's branch
multiplier into attn.proj and mlp.fc2 (weight and bias), muP's attention scale into the q_norm
gain and bias under qk_norm, σReparam into each weight (export).
Refused, naming the option: model.norm_eps other than timm's 1e-6 (timm's config cannot name
another eps), muP's attention scale without qk_norm (it would scale only the query rows of
timm's fused qkv, one tensor that a plan entry maps whole), RMSNorm, SwiGLU, Peri-LN.
"""

from __future__ import annotations

from pretrain.interop.hf_lm import query_mult
from pretrain.interop.plan import ExportRefused, Piece
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import output_mult, residual_mult

ARCHITECTURE = "vit_base_patch16_224"  # a plain ViT; model_args override all of its sizes
TIMM_NORM_EPS = 1e-6  # timm's ViT LayerNorm eps (partial(LayerNorm, eps=1e-6))

# config.json keys that change the math, model_args.* nested; a folder that omits one of
# model_args reads VisionTransformer's default for it (DEFAULTS)
MATH_KEYS = ("num_classes", "model_args.img_size", "model_args.patch_size",
             "model_args.in_chans", "model_args.embed_dim", "model_args.depth",
             "model_args.num_heads", "model_args.mlp_ratio", "model_args.qkv_bias",
             "model_args.proj_bias", "model_args.qk_norm", "model_args.class_token",
             "model_args.global_pool", "model_args.fc_norm", "model_args.act_layer",
             "model_args.norm_layer", "model_args.init_values", "model_args.reg_tokens",
             "model_args.no_embed_class", "model_args.pre_norm", "model_args.pos_embed")
DEFAULTS = {"model_args.img_size": 224, "model_args.patch_size": 16, "model_args.in_chans": 3,
            "model_args.embed_dim": 768, "model_args.depth": 12, "model_args.num_heads": 12,
            "model_args.mlp_ratio": 4.0, "model_args.qkv_bias": True,
            "model_args.proj_bias": True, "model_args.qk_norm": False,
            "model_args.class_token": True, "model_args.global_pool": "token",
            "model_args.fc_norm": None, "model_args.act_layer": None,
            "model_args.norm_layer": None, "model_args.init_values": None,
            "model_args.reg_tokens": 0, "model_args.no_embed_class": False,
            "model_args.pre_norm": False, "model_args.pos_embed": "learn"}


def check_expressible(m: ModelConfig) -> None:
    refusals = [
        (m.family != "vit", f"model.family={m.family!r} is not a vit"),
        (m.norm_eps != TIMM_NORM_EPS, f"model.norm_eps={m.norm_eps}: timm's ViT LayerNorm eps "
                                      f"is {TIMM_NORM_EPS} and its config cannot name another"),
        (query_mult(m) != 1.0 and not m.qk_norm,
         f"model.mup (attention scale {query_mult(m):g} x 1/sqrt(head_dim)) without "
         "model.qk_norm: timm's fused qkv keeps 1/sqrt(head_dim)"),
        (m.norm != "layernorm", f"model.norm={m.norm}: timm's ViT uses LayerNorm"),
        (m.mlp not in ("auto", "gelu"), f"model.mlp={m.mlp}: timm's ViT MLP is GELU"),
        (m.norm_placement != "pre", f"model.norm_placement={m.norm_placement}: timm's ViT is "
                                    "pre-norm"),
    ]
    for refused, why in refusals:
        if refused:
            raise ExportRefused(why)


def foreign_layout(m: ModelConfig, found: dict) -> dict:
    """Spellings of the same model a folder may use: img_size as an int or [H, W] (timm's own
    save writes the list); under the class token, fc_norm None (timm's default: a norm after
    pooling for avg pooling only) or false."""
    args = found.get("model_args")
    args = args if isinstance(args, dict) else {}
    size, square = args.get("img_size"), m.vit.image_size
    layout = {"img_size": size} if size in (square, [square, square]) else {}
    if m.vit.pooling == "cls" and args.get("fc_norm") in (None, False):  # absent: None
        layout["fc_norm"] = args.get("fc_norm")
    return layout


def config_json(m: ModelConfig, special: dict, img_size: int | list[int] | None = None,
                fc_norm: bool | None = False) -> dict:
    """timm's save_for_hf config (`img_size`, `fc_norm`: a folder's spelling, on import)."""
    check_expressible(m)
    v = m.vit
    pool = "token" if v.pooling == "cls" else "avg"
    model_args = {
        "num_classes": v.num_classes, "patch_size": v.patch_size,
        "img_size": [v.image_size, v.image_size] if img_size is None else img_size,
        "in_chans": v.in_channels, "embed_dim": m.width, "depth": m.depth,
        "num_heads": m.num_heads, "mlp_ratio": m.mlp_ratio, "qkv_bias": m.bias,
        "proj_bias": m.bias, "qk_norm": m.qk_norm, "class_token": v.pooling == "cls",
        "global_pool": pool, "fc_norm": fc_norm,  # our final norm acts before the pooling
    }
    return {
        "architecture": ARCHITECTURE, "num_classes": v.num_classes, "num_features": m.width,
        "global_pool": pool, "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [v.in_channels, v.image_size, v.image_size], "fixed_input_size": True,
            "num_classes": v.num_classes, "first_conv": "patch_embed.proj",
            "classifier": "head", "custom_load": False,
        },
    }


def pieces(m: ModelConfig, **spelling: object) -> list[Piece]:
    """Our tensors <-> timm's (`spelling`: foreign_layout's keywords; no tensor depends on
    them)."""
    check_expressible(m)
    d, v = m.width, m.vit
    om, rm, qm = output_mult(m), residual_mult(m), query_mult(m)
    out = [Piece("cls_token", "cls_token")] if v.pooling == "cls" else []
    out += [Piece("pos_embed", "pos_embed"),
            Piece("patch_embed.weight", "patch_embed.proj.weight",
                  shape=(d, v.in_channels, v.patch_size, v.patch_size))]
    out.append(Piece("patch_embed.bias", "patch_embed.proj.bias"))  # always (as timm's)
    kinds = ("weight", "bias") if m.bias else ("weight",)
    for i in range(m.depth):
        b = f"blocks.{i}."
        out += [Piece(b + "norm1.weight", b + "norm1.weight"),
                Piece(b + "norm1.bias", b + "norm1.bias")]
        out += [Piece(b + f"attn.qkv.{k}", b + f"attn.qkv.{k}") for k in kinds]
        if m.qk_norm:  # the attention scale rides on the normalised query
            out += [Piece(b + f"attn.q_norm.{k}", b + f"attn.q_norm.{k}", mult=qm)
                    for k in ("weight", "bias")]
            out += [Piece(b + f"attn.k_norm.{k}", b + f"attn.k_norm.{k}")
                    for k in ("weight", "bias")]
        out += [Piece(b + f"attn.proj.{k}", b + f"attn.proj.{k}", mult=rm) for k in kinds]
        out += [Piece(b + "norm2.weight", b + "norm2.weight"),
                Piece(b + "norm2.bias", b + "norm2.bias")]
        out += [Piece(b + f"mlp.fc1.{k}", b + f"mlp.fc1.{k}") for k in kinds]
        out += [Piece(b + f"mlp.fc2.{k}", b + f"mlp.fc2.{k}", mult=rm) for k in kinds]
    out += [Piece("norm.weight", "norm.weight"), Piece("norm.bias", "norm.bias"),
            Piece("head.weight", "head.weight", mult=om),
            Piece("head.bias", "head.bias")]  # the multiplier scales the input only
    return out
