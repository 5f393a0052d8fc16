"""The decoder LM in transformers' layouts: Llama, Qwen3, GPT-NeoX, Gemma2 or Gemma3, whichever
computes the same function as the configured model.

    placement norm     mlp     qk_norm  ->  architecture     (RoPE on all dims)
    pre       rmsnorm  swiglu  no           LlamaForCausalLM   attention_bias/mlp_bias=model.bias
    pre       rmsnorm  swiglu  yes          Qwen3ForCausalLM   q_norm/k_norm per head before RoPE
    pre       layernorm gelu   no           GPTNeoXForCausalLM sequential residual, rotary_pct 1
    peri      rmsnorm  swiglu  no           Gemma2ForCausalLM  no biases
    peri      rmsnorm  swiglu  yes          Gemma3ForCausalLM  no biases

RoPE: our `apply_rope` rotates the pairs (x_i, x_{i+hd/2}) with inv_freq = theta^(-2i/hd),
which is transformers' `rotate_half` convention, so q/k rows need no permutation (the
permutation in transformers' convert_llama_weights_to_hf.py turns Meta's interleaved pairs
into this convention; our weights are in it already). GPT-NeoX fuses q, k, v per head
([head, (q|k|v), head_dim] rows) where ours are [(q|k|v), head, head_dim]: a row permutation.
GPT-NeoX's MLP always has biases: with model.bias=false they are exported as zeros (the same
function) and an import requires them zero. Peri-LN is Gemma2's block: `_peri_architecture`
says what is switched off and what is folded.

Folded when exact: muP's attention scale (sqrt(base_head_dim)/head_dim instead of
1/sqrt(head_dim)) into the query rows (or the q_norm gain under qk_norm; Gemma's
query_pre_attn_scalar), muP's readout multiplier into an untied lm_head or, when tied, into
the final norm (its only consumer is the readout), the depth rule's branch multiplier into
each block's attention output and MLP down projection (weight and bias; under Peri-LN into the
output norms' gains), σReparam's gamma/sigma(W) into each weight (adapters.py; export only).
Imported exactly: a folder with grouped-query attention (fewer key/value heads, each copied
into the query heads sharing it; `foreign_layout`); our model has no GQA, so none is exported.
Refused, naming the option: a bias on the untied readout, GELU with RMSNorm, SwiGLU with
LayerNorm, qk_norm with LayerNorm or biases, Peri-LN with LayerNorm, GELU or biases.
"""

from __future__ import annotations

import math

import torch

from pretrain.checkpoint.convert.mismatch import CheckpointMismatchError
from pretrain.interop.plan import ExportRefused, Piece
from pretrain.models.blocks import swiglu_hidden
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import attention_scale, output_mult, residual_mult


def architecture(m: ModelConfig) -> str:
    """The transformers class whose forward equals ours, or ExportRefused naming the option."""
    if m.family != "lm":
        raise ExportRefused(f"model.family={m.family!r} is not an lm")
    mlp = "swiglu" if m.mlp == "auto" else m.mlp
    if m.norm_placement == "peri":
        return _peri_architecture(m, mlp)
    if not m.lm.tie_embeddings and m.bias:
        raise ExportRefused("model.bias=true puts a bias on the untied readout (head.bias); "
                            "transformers' causal-LM heads have none")
    if m.norm == "rmsnorm" and mlp == "swiglu":
        if m.qk_norm and m.bias:
            raise ExportRefused("model.qk_norm with model.bias=true: Qwen3's MLP has no biases")
        return "Qwen3ForCausalLM" if m.qk_norm else "LlamaForCausalLM"
    if m.norm == "layernorm" and mlp == "gelu" and not m.qk_norm:
        return "GPTNeoXForCausalLM"
    raise ExportRefused(f"model.norm={m.norm} with model.mlp={mlp}"
                        f"{' and model.qk_norm' if m.qk_norm else ''}: no transformers "
                        "decoder computes that block (rmsnorm+swiglu: Llama/Qwen3; "
                        "layernorm+gelu: GPT-NeoX)")


GEMMA = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")


def _peri_architecture(m: ModelConfig, mlp: str) -> str:
    """Gemma2's block is Peri-LN: x + post_norm(f(pre_norm(x))) for attention and MLP, with
    RMSNorm and a gated MLP whose activation is configurable (silu: our SwiGLU); Gemma3's
    adds per-head q/k RMSNorm before RoPE (our qk_norm). Their other departures switch off
    exactly: softcapping None, every layer full attention, the attention scale from
    query_pre_attn_scalar; (1 + weight) gains and the sqrt(hidden) embedding scale fold."""
    if m.norm != "rmsnorm" or mlp != "swiglu":
        raise ExportRefused(f"model.norm_placement=peri with model.norm={m.norm} and "
                            f"model.mlp={mlp}: transformers' Peri-LN decoders (Gemma2/Gemma3) "
                            "use RMSNorm and a gated MLP (model.norm=rmsnorm, model.mlp=swiglu)")
    if m.bias:
        raise ExportRefused("model.bias=true with model.norm_placement=peri: Gemma2/Gemma3's "
                            "MLP has no biases")
    return "Gemma3ForCausalLM" if m.qk_norm else "Gemma2ForCausalLM"


def embed_scale(m: ModelConfig) -> float:
    """Gemma multiplies the embeddings by sqrt(hidden_size), rounded to float32 as it does."""
    return float(torch.tensor(m.width**0.5, dtype=torch.float32))


def query_pre_attn_scalar(m: ModelConfig) -> float | int:
    """Gemma's attention scale is query_pre_attn_scalar**-0.5: head_dim in SP, 1/scale**2
    under muP (so no weight changes)."""
    head_dim = m.width // m.num_heads
    return head_dim if not m.mup.enabled else attention_scale(head_dim, m) ** -2


def _gemma_pieces(m: ModelConfig, kv_heads: int | None) -> list[Piece]:
    """Gemma's gains are stored as weight - 1; the embedding is divided by its scale; with tied
    embeddings the readout sees that division too, so the final norm's gain takes the scale
    (and muP's readout multiplier) back: its only consumer is the readout."""
    tied, om, scale = m.lm.tie_embeddings, output_mult(m), embed_scale(m)
    rm = residual_mult(m)  # after each output norm: folded into its gain
    out = [Piece("tok_embed.weight", "model.embed_tokens.weight", mult=1.0 / scale)]
    for i in range(m.depth):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.append(Piece(ours + "norm1.weight", theirs + "input_layernorm.weight", offset=-1.0))
        out += _attention_pieces(m, ours, theirs, kv_heads, 1.0, norm_offset=-1.0)
        out += [Piece(ours + "attn_out_norm.weight", theirs + "post_attention_layernorm.weight",
                      mult=rm, offset=-1.0),
                Piece(ours + "norm2.weight", theirs + "pre_feedforward_layernorm.weight",
                      offset=-1.0)]
        out += _mlp_pieces(m, ours, theirs)
        out.append(Piece(ours + "mlp_out_norm.weight",
                         theirs + "post_feedforward_layernorm.weight", mult=rm, offset=-1.0))
    out.append(Piece("norm.weight", "model.norm.weight", mult=scale * final_norm_mult(m)
                     if tied else 1.0, offset=-1.0))
    if not tied:
        out.append(Piece("head.weight", "lm_head.weight", mult=om))
    return out


def final_norm_mult(m: ModelConfig) -> float:
    """muP's readout multiplier, folded into the final norm's affine parameters when the
    readout is tied to the input embedding (the final norm feeds only the readout)."""
    return output_mult(m) if m.lm.tie_embeddings else 1.0


def query_mult(m: ModelConfig) -> float:
    """Our attention-logit scale over transformers' 1/sqrt(head_dim): exactly 1 in SP (no
    arithmetic on the weights), muP's sqrt(base_head_dim / head_dim) otherwise."""
    if not m.mup.enabled:
        return 1.0
    head_dim = m.width // m.num_heads
    return attention_scale(head_dim, m) * math.sqrt(head_dim)


def foreign_layout(m: ModelConfig, found: dict) -> dict:
    """What an imported folder may differ in from our own export: fewer key/value heads (GQA).

    Our attention has one key/value head per query head. A Llama/Qwen3 folder whose
    num_key_value_heads divides num_attention_heads imports exactly: transformers' `repeat_kv`
    gives query head h the key/value head h // (heads / kv_heads), so that head's rows are
    copied into each of its query heads' k and v rows (full multi-head attention computing
    the same logits; it exports back as such). Returns the keywords of `config_json`/`pieces`.
    """
    kv = found.get("num_key_value_heads", m.num_heads)
    if kv == m.num_heads or architecture(m) == "GPTNeoXForCausalLM":
        return {}  # the config check names a NeoX mismatch
    if not isinstance(kv, int) or kv <= 0 or m.num_heads % kv:
        raise CheckpointMismatchError(
            f"config.json: num_key_value_heads={kv!r} does not divide model.num_heads="
            f"{m.num_heads}: its key/value heads cannot be repeated into ours")
    return {"kv_heads": kv}


def config_json(m: ModelConfig, special: dict[str, int | None],
                kv_heads: int | None = None) -> dict:
    """config.json of the architecture, every field that changes the math set explicitly
    (`kv_heads`: the GQA folder an import accepts, see `foreign_layout`)."""
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
            "layer_norm_eps": m.norm_eps, "use_parallel_residual": False,
            "attention_bias": m.bias, "hidden_dropout": 0.0, "classifier_dropout": 0.1,
        }
    out = common | {
        "intermediate_size": swiglu_hidden(m), "num_key_value_heads": kv_heads or m.num_heads,
        "head_dim": head_dim, "hidden_act": "silu", "rms_norm_eps": m.norm_eps,
        "attention_bias": m.bias,
    }
    if arch == "LlamaForCausalLM":
        return out | {"model_type": "llama", "mlp_bias": m.bias, "pretraining_tp": 1}
    if arch in GEMMA:
        out = {k: v for k, v in out.items() if k != "hidden_act"} | {
            "hidden_activation": "silu", "query_pre_attn_scalar": query_pre_attn_scalar(m),
            "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "sliding_window": m.lm.seq_len, "layer_types": ["full_attention"] * m.depth}
        if arch == "Gemma2ForCausalLM":
            return out | {"model_type": "gemma2"}
        return out | {"model_type": "gemma3_text", "rope_local_base_freq": m.lm.rope_theta,
                      "use_bidirectional_attention": False}
    return out | {"model_type": "qwen3", "use_sliding_window": False, "sliding_window": None,
                  "max_window_layers": m.depth, "layer_types": ["full_attention"] * m.depth}


# Config fields a folder must match for its weights to mean what our model computes.
MATH_KEYS = ("architectures", "vocab_size", "hidden_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
             "hidden_act", "rope_theta", "rope_scaling", "rms_norm_eps", "layer_norm_eps",
             "attention_bias", "mlp_bias", "tie_word_embeddings", "rotary_pct",
             "use_parallel_residual", "use_sliding_window", "hidden_activation",
             "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping",
             "layer_types", "use_bidirectional_attention")


# The library's value of a key a folder omits (save_pretrained writes only non-defaults).
_COMMON_DEFAULTS = {"rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
                    "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-6,
                    "use_parallel_residual": True, "rotary_pct": 0.25}
_GEMMA_DEFAULTS = {"tie_word_embeddings": True, "head_dim": 256, "num_key_value_heads": 4,
                   "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
                   "layer_types": None}  # None: alternating sliding-window layers
_ARCH_DEFAULTS = {
    "Gemma2ForCausalLM": _GEMMA_DEFAULTS | {"final_logit_softcapping": 30.0,
                                            "attn_logit_softcapping": 50.0},
    "Gemma3ForCausalLM": _GEMMA_DEFAULTS | {"rope_theta": 1_000_000.0,
                                            "final_logit_softcapping": None,
                                            "attn_logit_softcapping": None,
                                            "use_bidirectional_attention": False},
}


def library_defaults(expected: dict) -> dict:
    """Defaults of the expected architecture's config class for the keys MATH_KEYS checks."""
    return _COMMON_DEFAULTS | _ARCH_DEFAULTS.get(expected["architectures"][0], {})


def _kv_rows(m: ModelConfig, kv_heads: int | None, which: int) -> list[torch.Tensor | slice]:
    """The rows of our fused qkv that one of their k (which=1) or v (2) projections fills: all
    `d` rows of ours under MHA; under GQA one row index per replica r, listing the rows of
    query heads g*rep + r for each of their heads g (`foreign_layout`), in their row order."""
    d, heads = m.width, m.num_heads
    if not kv_heads or kv_heads == heads:
        return [slice(which * d, (which + 1) * d)]
    rep, hd = heads // kv_heads, d // heads
    ours = torch.arange(which * d, (which + 1) * d).view(kv_heads, rep, hd)
    return [ours[:, r].reshape(-1) for r in range(rep)]


def pieces(m: ModelConfig, kv_heads: int | None = None) -> list[Piece]:
    """Our tensor names <-> the architecture's, block by block (`kv_heads`: import only)."""
    arch = architecture(m)
    if arch == "GPTNeoXForCausalLM":
        return _neox_pieces(m)
    if arch in GEMMA:
        return _gemma_pieces(m, kv_heads)
    qm, rm = query_mult(m), residual_mult(m)
    out = [Piece("tok_embed.weight", "model.embed_tokens.weight")]
    for i in range(m.depth):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.append(Piece(ours + "norm1.weight", theirs + "input_layernorm.weight"))
        out += _attention_pieces(m, ours, theirs, kv_heads, qm, branch_mult=rm)
        out.append(Piece(ours + "norm2.weight", theirs + "post_attention_layernorm.weight"))
        out += _mlp_pieces(m, ours, theirs, rm)
    out.append(Piece("norm.weight", "model.norm.weight", mult=final_norm_mult(m)))
    if not m.lm.tie_embeddings:
        out.append(Piece("head.weight", "lm_head.weight", mult=output_mult(m)))
    return out


def _attention_pieces(m: ModelConfig, ours: str, theirs: str, kv_heads: int | None,
                      qm: float, norm_offset: float = 0.0,
                      branch_mult: float = 1.0) -> list[Piece]:
    """q/k/v/o projections (and q/k norms) of one block; `qm` folded into the queries,
    `branch_mult` (the depth rule's, pre-norm blocks) into the output projection."""
    d, out = m.width, []
    k_rows, v_rows = _kv_rows(m, kv_heads, 1), _kv_rows(m, kv_heads, 2)
    for kind in ("weight", "bias") if m.bias else ("weight",):
        qkv = ours + f"attn.qkv.{kind}"
        out.append(Piece(qkv, theirs + f"self_attn.q_proj.{kind}", slice(0, d),
                         qm if not m.qk_norm else 1.0))
        out += [Piece(qkv, theirs + f"self_attn.k_proj.{kind}", rows) for rows in k_rows]
        out += [Piece(qkv, theirs + f"self_attn.v_proj.{kind}", rows) for rows in v_rows]
        out.append(Piece(ours + f"attn.proj.{kind}", theirs + f"self_attn.o_proj.{kind}",
                         mult=branch_mult))
    if m.qk_norm:
        out += [Piece(ours + "attn.q_norm.weight", theirs + "self_attn.q_norm.weight",
                      mult=qm, offset=norm_offset),
                Piece(ours + "attn.k_norm.weight", theirs + "self_attn.k_norm.weight",
                      offset=norm_offset)]
    return out


def _mlp_pieces(m: ModelConfig, ours: str, theirs: str,
                branch_mult: float = 1.0) -> list[Piece]:
    """SwiGLU's fused fc1 split into gate and up, fc2 as down (`branch_mult` folded in)."""
    h, out = swiglu_hidden(m), []
    for kind in ("weight", "bias") if m.bias else ("weight",):
        fc1 = ours + f"mlp.fc1.{kind}"
        out += [Piece(fc1, theirs + f"mlp.gate_proj.{kind}", slice(0, h)),
                Piece(fc1, theirs + f"mlp.up_proj.{kind}", slice(h, 2 * h)),
                Piece(ours + f"mlp.fc2.{kind}", theirs + f"mlp.down_proj.{kind}",
                      mult=branch_mult)]
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
    hidden = int(m.width * m.mlp_ratio)
    out = [Piece("tok_embed.weight", "gpt_neox.embed_in.weight")]
    for i in range(m.depth):
        ours, theirs = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        for kind in ("weight", "bias"):  # LayerNorms always have a bias, linears if model.bias
            linear = m.bias or kind == "weight"
            out += [Piece(ours + f"norm1.{kind}", theirs + f"input_layernorm.{kind}")]
            if linear:
                out += [Piece(ours + f"attn.qkv.{kind}",
                              theirs + f"attention.query_key_value.{kind}", perm),
                        Piece(ours + f"attn.proj.{kind}", theirs + f"attention.dense.{kind}",
                              mult=rm)]
            out += [Piece(ours + f"norm2.{kind}", theirs + f"post_attention_layernorm.{kind}")]
            fc1, fc2 = theirs + f"mlp.dense_h_to_4h.{kind}", theirs + f"mlp.dense_4h_to_h.{kind}"
            if linear:
                out += [Piece(ours + f"mlp.fc1.{kind}", fc1),
                        Piece(ours + f"mlp.fc2.{kind}", fc2, mult=rm)]
            else:  # GPT-NeoX's MLP always has biases: zero is our bias-free layer
                out += [Piece(None, fc1, shape=(hidden,)), Piece(None, fc2, shape=(m.width,))]
    out += [Piece("norm.weight", "gpt_neox.final_layer_norm.weight", mult=final_norm_mult(m)),
            Piece("norm.bias", "gpt_neox.final_layer_norm.bias", mult=final_norm_mult(m))]
    if not m.lm.tie_embeddings:
        out.append(Piece("head.weight", "embed_out.weight", mult=output_mult(m)))
    return out
