"""The decoder LM in transformers' layouts: Llama, Qwen3 or GPT-NeoX, whichever computes the
same function as the configured model.

    norm     mlp     qk_norm  ->  architecture       (each block: pre-norm, RoPE on all dims)
    rmsnorm  swiglu  no           LlamaForCausalLM   attention_bias / mlp_bias = model.bias
    rmsnorm  swiglu  yes          Qwen3ForCausalLM   q_norm/k_norm per head before RoPE
    layernorm gelu   no           GPTNeoXForCausalLM sequential residual, rotary_pct 1.0

RoPE: our `apply_rope` rotates the pairs (x_i, x_{i+hd/2}) with inv_freq = theta^(-2i/hd),
which is transformers' `rotate_half` convention, so q/k rows need no permutation (the
permutation in transformers' convert_llama_weights_to_hf.py turns Meta's interleaved pairs
into this convention; our weights are in it already). GPT-NeoX fuses q, k, v per head
([head, (q|k|v), head_dim] rows) where ours are [(q|k|v), head, head_dim]: a row permutation.

Folded when exact: muP's attention scale (sqrt(base_head_dim)/head_dim instead of
1/sqrt(head_dim)) into the query rows (or the q_norm gain under qk_norm), muP's readout
multiplier into an untied lm_head, the depth rule's branch multiplier into each block's
attention output and MLP down projection (weight and bias), σReparam's gamma/sigma(W) into
each weight (adapters.py; export only). Refused, naming the option: Peri-LN, a bias on
the untied readout, a readout multiplier with tied embeddings, GELU with RMSNorm, SwiGLU with
LayerNorm, qk_norm with LayerNorm or biases, GPT-NeoX without biases.
"""

from __future__ import annotations

import math

import torch

from pretrain.interop.plan import ExportRefused, Piece
from pretrain.models.blocks import swiglu_hidden
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import attention_scale, output_mult, residual_mult

NORM_EPS = 1e-5  # blocks.make_norm's default, used by every norm of the LM


def architecture(m: ModelConfig) -> str:
    """The transformers class whose forward equals ours, or ExportRefused naming the option."""
    if m.family != "lm":
        raise ExportRefused(f"model.family={m.family!r} is not an lm")
    if m.norm_placement != "pre":
        raise ExportRefused(f"model.norm_placement={m.norm_placement} (Peri-LN normalises each "
                            "sublayer's output): no transformers decoder has that block")
    mlp = "swiglu" if m.mlp == "auto" else m.mlp
    if not m.lm.tie_embeddings and m.bias:
        raise ExportRefused("model.bias=true puts a bias on the untied readout (head.bias); "
                            "transformers' causal-LM heads have none")
    if m.lm.tie_embeddings and m.mup.enabled and output_mult(m) != 1.0:
        raise ExportRefused(f"model.mup.output_mult: a readout multiplier of {output_mult(m)} "
                            "cannot be folded into embeddings tied to the input")
    if m.norm == "rmsnorm" and mlp == "swiglu":
        if m.qk_norm and m.bias:
            raise ExportRefused("model.qk_norm with model.bias=true: Qwen3's MLP has no biases")
        return "Qwen3ForCausalLM" if m.qk_norm else "LlamaForCausalLM"
    if m.norm == "layernorm" and mlp == "gelu" and not m.qk_norm:
        if not m.bias:
            raise ExportRefused("model.bias=false with model.norm=layernorm and model.mlp=gelu: "
                                "GPT-NeoX (the RoPE+GELU+LayerNorm decoder) has biases")
        return "GPTNeoXForCausalLM"
    raise ExportRefused(f"model.norm={m.norm} with model.mlp={mlp}"
                        f"{' and model.qk_norm' if m.qk_norm else ''}: no transformers "
                        "decoder computes that block (rmsnorm+swiglu: Llama/Qwen3; "
                        "layernorm+gelu: GPT-NeoX)")


def query_mult(m: ModelConfig) -> float:
    """Our attention-logit scale over transformers' 1/sqrt(head_dim): exactly 1 in SP (no
    arithmetic on the weights), muP's sqrt(base_head_dim / head_dim) otherwise."""
    if not m.mup.enabled:
        return 1.0
    head_dim = m.width // m.num_heads
    return attention_scale(head_dim, m) * math.sqrt(head_dim)


def config_json(m: ModelConfig, special: dict[str, int | None]) -> dict:
    """config.json of the architecture, every field that changes the math set explicitly."""
    arch = architecture(m)
    head_dim = m.width // m.num_heads
    common = {
        "architectures": [arch], "vocab_size": m.lm.vocab_size, "hidden_size": m.width,
        "num_hidden_layers": m.depth, "num_attention_heads": m.num_heads,
        "max_position_embeddings": m.lm.seq_len, "rope_theta": m.lm.rope_theta,
        "rope_scaling": None, "tie_word_embeddings": m.lm.tie_embeddings,
        "attention_dropout": m.dropout, "initializer_range": m.init_std,
        "torch_dtype": "float32", "use_cache": True,
        "bos_token_id": special.get("bos"), "eos_token_id": special.get("eos"),
        "pad_token_id": special.get("pad"),
    }
    if arch == "GPTNeoXForCausalLM":
        return common | {
            "model_type": "gpt_neox", "intermediate_size": int(m.width * m.mlp_ratio),
            "hidden_act": "gelu", "rotary_pct": 1.0, "rotary_emb_base": m.lm.rope_theta,
            "layer_norm_eps": NORM_EPS, "use_parallel_residual": False,
            "attention_bias": True, "hidden_dropout": 0.0, "classifier_dropout": 0.1,
        }
    out = common | {
        "intermediate_size": swiglu_hidden(m), "num_key_value_heads": m.num_heads,
        "head_dim": head_dim, "hidden_act": "silu", "rms_norm_eps": NORM_EPS,
        "attention_bias": m.bias,
    }
    if arch == "LlamaForCausalLM":
        return out | {"model_type": "llama", "mlp_bias": m.bias, "pretraining_tp": 1}
    return out | {"model_type": "qwen3", "use_sliding_window": False, "sliding_window": None,
                  "max_window_layers": m.depth, "layer_types": ["full_attention"] * m.depth}


# Config fields a folder must match for its weights to mean what our model computes.
MATH_KEYS = ("architectures", "vocab_size", "hidden_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
             "hidden_act", "rope_theta", "rope_scaling", "rms_norm_eps", "layer_norm_eps",
             "attention_bias", "mlp_bias", "tie_word_embeddings", "rotary_pct",
             "use_parallel_residual", "use_sliding_window")


def pieces(m: ModelConfig) -> list[Piece]:
    """Our tensor names <-> the architecture's, block by block."""
    arch = architecture(m)
    if arch == "GPTNeoXForCausalLM":
        return _neox_pieces(m)
    d, h = m.width, swiglu_hidden(m)
    qm, rm = query_mult(m), residual_mult(m)
    out = [Piece("tok_embed.weight", "model.embed_tokens.weight")]
    for i in range(m.depth):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.append(Piece(ours + "norm1.weight", theirs + "input_layernorm.weight"))
        for kind in ("weight", "bias") if m.bias else ("weight",):
            qkv = ours + f"attn.qkv.{kind}"
            out += [Piece(qkv, theirs + f"self_attn.q_proj.{kind}", slice(0, d),
                          qm if not m.qk_norm else 1.0),
                    Piece(qkv, theirs + f"self_attn.k_proj.{kind}", slice(d, 2 * d)),
                    Piece(qkv, theirs + f"self_attn.v_proj.{kind}", slice(2 * d, 3 * d)),
                    Piece(ours + f"attn.proj.{kind}", theirs + f"self_attn.o_proj.{kind}",
                          mult=rm)]
        if m.qk_norm:
            out += [Piece(ours + "attn.q_norm.weight", theirs + "self_attn.q_norm.weight",
                          mult=qm),
                    Piece(ours + "attn.k_norm.weight", theirs + "self_attn.k_norm.weight")]
        out.append(Piece(ours + "norm2.weight", theirs + "post_attention_layernorm.weight"))
        for kind in ("weight", "bias") if m.bias else ("weight",):
            fc1 = ours + f"mlp.fc1.{kind}"
            out += [Piece(fc1, theirs + f"mlp.gate_proj.{kind}", slice(0, h)),
                    Piece(fc1, theirs + f"mlp.up_proj.{kind}", slice(h, 2 * h)),
                    Piece(ours + f"mlp.fc2.{kind}", theirs + f"mlp.down_proj.{kind}", mult=rm)]
    out.append(Piece("norm.weight", "model.norm.weight"))
    if not m.lm.tie_embeddings:
        out.append(Piece("head.weight", "lm_head.weight", mult=output_mult(m)))
    return out


def _neox_qkv_rows(m: ModelConfig) -> torch.Tensor:
    """Row i of GPT-NeoX's fused qkv is our row perm[i]: theirs are [head, qkv, e], ours
    [qkv, head, e]."""
    heads, hd = m.num_heads, m.width // m.num_heads
    return torch.arange(3 * m.width).view(3, heads, hd).transpose(0, 1).reshape(-1)


def _neox_pieces(m: ModelConfig) -> list[Piece]:
    if query_mult(m) != 1.0:
        raise ExportRefused("model.mup.enabled: GPT-NeoX fuses q with k and v, so muP's "
                            "attention scale cannot be folded into the query rows alone")
    perm, rm = _neox_qkv_rows(m), residual_mult(m)
    out = [Piece("tok_embed.weight", "gpt_neox.embed_in.weight")]
    for i in range(m.depth):
        ours, theirs = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        for kind in ("weight", "bias"):
            out += [Piece(ours + f"norm1.{kind}", theirs + f"input_layernorm.{kind}"),
                    Piece(ours + f"attn.qkv.{kind}", theirs + f"attention.query_key_value.{kind}",
                          perm),
                    Piece(ours + f"attn.proj.{kind}", theirs + f"attention.dense.{kind}",
                          mult=rm),
                    Piece(ours + f"norm2.{kind}", theirs + f"post_attention_layernorm.{kind}"),
                    Piece(ours + f"mlp.fc1.{kind}", theirs + f"mlp.dense_h_to_4h.{kind}"),
                    Piece(ours + f"mlp.fc2.{kind}", theirs + f"mlp.dense_4h_to_h.{kind}",
                          mult=rm)]
    out += [Piece("norm.weight", "gpt_neox.final_layer_norm.weight"),
            Piece("norm.bias", "gpt_neox.final_layer_norm.bias")]
    if not m.lm.tie_embeddings:
        out.append(Piece("head.weight", "embed_out.weight", mult=output_mult(m)))
    return out
