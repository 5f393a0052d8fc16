"""A grouped-query-attention model from the ecosystem imports into our multi-head LM (Llama,
Qwen3, and Gemma2/Gemma3 into a Peri-LN LM).

Our attention has one key/value head per query head, so there is no GQA model to export; a
Llama/Qwen3 folder with num_key_value_heads < num_attention_heads imports by copying each of
its key/value heads into the query heads that share it (transformers' `repeat_kv`). Made and
saved by transformers itself, the folder must give, after import: the same logits (fp32, max
abs diff <= 1e-5) and 20 greedy tokens; the run's export (now full MHA) loads with
`from_pretrained` and computes the same logits, and export -> import -> export is bitwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import read_model_tensors
from pretrain.checkpoint.convert.mismatch import CheckpointMismatchError
from pretrain.config import load_config
from pretrain.interop import export_folder, import_folder
from pretrain.models import build_model
from pretrain.models.lm_generate import generate
from tests.interop_libs import transformers
from tests.test_interop_hf_lm import RECIPE, SMALL

HEADS, WIDTH = 4, 64


def _saved_by_transformers(folder: Path, arch: str, kv_heads: int, bias: bool) -> torch.nn.Module:
    """A random `arch` model with GQA (with `bias`: biases everywhere and tied embeddings, as
    our model.bias=true needs), every weight perturbed, saved to `folder`."""
    lib = transformers()
    common = dict(vocab_size=256, hidden_size=WIDTH, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=HEADS, num_key_value_heads=kv_heads, head_dim=WIDTH // HEADS,
                  rms_norm_eps=1e-5, max_position_embeddings=48, tie_word_embeddings=bias,
                  attention_bias=bias, rope_theta=10000.0)
    # Gemma with what Peri-LN needs: SwiGLU, no softcapping, full attention, 1/sqrt(head_dim)
    gemma = dict(hidden_activation="silu", query_pre_attn_scalar=WIDTH // HEADS,
                 final_logit_softcapping=None, attn_logit_softcapping=None,
                 layer_types=["full_attention"] * 2)
    if arch == "llama":
        model = lib.LlamaForCausalLM(lib.LlamaConfig(**common, mlp_bias=bias))
    elif arch == "qwen3":
        model = lib.Qwen3ForCausalLM(lib.Qwen3Config(**common, use_sliding_window=False))
    elif arch == "gemma2":
        model = lib.Gemma2ForCausalLM(lib.Gemma2Config(**common, **gemma))
    else:
        model = lib.Gemma3ForCausalLM(lib.Gemma3TextConfig(**common, **gemma))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "norm" in name else 0.02))
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval()


def _ours(arch: str, bias: bool, run: Path):
    return load_config(RECIPE, [*SMALL, f"model.width={WIDTH}", f"model.num_heads={HEADS}",
                                f"model.bias={str(bias).lower()}",
                                f"model.lm.tie_embeddings={str(bias).lower()}",
                                f"model.qk_norm={str(arch in ('qwen3', 'gemma3')).lower()}",
                                f"model.norm_placement={'peri' if 'gemma' in arch else 'pre'}",
                                f"run.dir={run}"])


def _logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(tokens)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("arch, kv_heads, bias", [("llama", 2, False), ("llama", 1, True),
                                                  ("qwen3", 2, False), ("gemma2", 2, False),
                                                  ("gemma3", 1, False)])
def test_gqa_folder_imports_as_mha_with_the_same_logits(arch, kv_heads, bias, tmp_path):
    theirs = _saved_by_transformers(tmp_path / "gqa", arch, kv_heads, bias)
    cfg = _ours(arch, bias, tmp_path / "run")
    ckpt = import_folder(tmp_path / "gqa", tmp_path / "run/checkpoints", cfg, "hf")
    ours = build_model(cfg.model).eval()
    ours.load_state_dict(read_model_tensors(ckpt))
    tokens = torch.randint(0, 256, (3, 48), generator=torch.Generator().manual_seed(2))
    want = _logits(theirs, tokens)
    diff = (_logits(ours, tokens) - want).abs().max().item()
    assert diff <= 1e-5, f"{arch} kv_heads={kv_heads}: max abs logit difference {diff}"
    prompt = tokens[0, :12].tolist()
    greedy = theirs.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert generate(ours, prompt, 20) == greedy

    first = export_folder(ckpt, tmp_path / "mha", "hf")
    mha = transformers().AutoModelForCausalLM.from_pretrained(
        first, torch_dtype=torch.float32, local_files_only=True).eval()
    assert mha.config.num_key_value_heads == HEADS
    assert (_logits(mha, tokens) - want).abs().max().item() <= 1e-5
    again = import_folder(first, tmp_path / "run2/checkpoints", _ours(arch, bias, tmp_path / "r2"),
                          "hf")
    second = export_folder(again, tmp_path / "mha2", "hf")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_kv_heads_that_do_not_divide_the_heads_are_refused_by_name(tmp_path):
    _saved_by_transformers(tmp_path / "gqa", "llama", 2, False)
    cfg = load_config(RECIPE, [*SMALL, "model.width=48", "model.num_heads=3", "model.bias=false",
                               f"run.dir={tmp_path / 'run'}"])
    config = (tmp_path / "gqa/config.json")
    config.write_text(config.read_text().replace('"num_attention_heads": 4',
                                                 '"num_attention_heads": 3'))
    with pytest.raises(CheckpointMismatchError, match="num_key_value_heads=2 does not divide"):
        import_folder(tmp_path / "gqa", tmp_path / "run/checkpoints", cfg, "hf")


def test_a_gemma_folder_with_its_softcapping_is_refused_by_name(tmp_path):
    """A config.json that omits a key means the config class's default: a Gemma2 folder
    without final_logit_softcapping caps logits at 30.0 (transformers loads it so), which
    our model does not, and import must say so rather than take our own value."""
    lib = transformers()
    config = lib.Gemma2Config(vocab_size=256, hidden_size=WIDTH, intermediate_size=176,
                              num_hidden_layers=2, num_attention_heads=HEADS,
                              num_key_value_heads=HEADS, head_dim=WIDTH // HEADS,
                              rms_norm_eps=1e-5, tie_word_embeddings=False,
                              hidden_activation="silu", query_pre_attn_scalar=WIDTH // HEADS,
                              attn_logit_softcapping=None, final_logit_softcapping=None,
                              layer_types=["full_attention"] * 2)
    lib.Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma", safe_serialization=True)
    path = tmp_path / "gemma/config.json"
    written = json.loads(path.read_text())
    del written["final_logit_softcapping"]
    path.write_text(json.dumps(written))
    assert lib.AutoConfig.from_pretrained(tmp_path / "gemma").final_logit_softcapping == 30.0
    cfg = _ours("gemma2", False, tmp_path / "run")
    with pytest.raises(CheckpointMismatchError, match="final_logit_softcapping=30.0"):
        import_folder(tmp_path / "gemma", tmp_path / "run/checkpoints", cfg, "hf")


def test_gains_of_a_bf16_gemma_folder_import_as_gemma_computes_them(tmp_path):
    """Gemma computes its gain as 1 + weight in float32 whatever the weights' dtype; importing
    a bf16 folder must do the same (in bf16, 1 + 0.01 rounds to 1.0078)."""
    theirs = _saved_by_transformers(tmp_path / "fp32", "gemma2", 2, False)
    theirs.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
    cfg = _ours("gemma2", False, tmp_path / "run")
    tensors = read_model_tensors(import_folder(tmp_path / "bf16", tmp_path / "run/checkpoints",
                                               cfg, "hf"))
    gain = theirs.model.layers[1].pre_feedforward_layernorm.weight.detach()
    assert torch.equal(tensors["blocks.1.norm2.weight"], 1.0 + gain.bfloat16().float())
