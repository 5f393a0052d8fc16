"""The LM leaves and re-enters the transformers ecosystem (pretrain/interop/hf_lm.py).

Checkpoints come from the real trainer; the exported folders are loaded with the real
transformers (`from_pretrained` on the folder, nothing downloaded) and must compute the same
logits (fp32, max abs diff <= 1e-5) and the same 20 greedy tokens; export -> import -> export
writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import read_model_tensors
from pretrain.cli.generate import load_lm
from pretrain.config import load_config
from pretrain.interop import ExportRefused, export_folder, import_folder
from pretrain.models.lm_generate import generate
from pretrain.trainer import train
from tests.conftest import REPO
from tests.interop_libs import transformers

RECIPE = REPO / "configs/lm_bytes.yaml"
SMALL = ["model.width=64", "model.depth=2", "model.num_heads=4", "model.lm.seq_len=48",
         "data.seq_len=48", "data.global_batch_size=4", "data.eval_batch_size=4",
         "parallel.backend=single", "logging.every_steps=1", "logging.eval_every_steps=0",
         "logging.progress_bar=false", "logging.tensorboard=false", "model.attn_entropy=false",
         "schedule.steps=2", "schedule.warmup_steps=1", "checkpoint.every_steps=2",
         "optim.lr=3e-2"]

VARIANTS = {
    "llama": ["model.bias=false"],
    "llama_bias_tied": ["model.bias=true", "model.lm.tie_embeddings=true"],
    "qwen3_qk_norm": ["model.bias=false", "model.qk_norm=true"],
    "neox_layernorm_gelu": ["model.norm=layernorm", "model.mlp=gelu", "model.bias=true",
                            "model.lm.tie_embeddings=true"],
    "neox_no_bias": ["model.norm=layernorm", "model.mlp=gelu", "model.bias=false"],
    "llama_mup_folded": ["model.bias=false", "model.mup.enabled=true", "model.mup.base_width=32",
                         "model.mup.output_mult=3.0"],
    "qwen3_mup_folded": ["model.bias=false", "model.qk_norm=true", "model.mup.enabled=true",
                         "model.mup.base_width=32"],
    "llama_mup_tied_folded": ["model.bias=false", "model.mup.enabled=true",
                              "model.mup.base_width=32", "model.mup.output_mult=3.0",
                              "model.lm.tie_embeddings=true"],
    "llama_sigma_reparam_folded": ["model.bias=false", "model.sigma_reparam=true"],
    "gemma2_peri": ["model.bias=false", "model.norm_placement=peri"],
    "gemma2_peri_tied_mup": ["model.bias=false", "model.norm_placement=peri",
                             "model.lm.tie_embeddings=true", "model.mup.enabled=true",
                             "model.mup.base_width=32", "model.mup.output_mult=3.0"],
    "gemma3_peri_qk_norm": ["model.bias=false", "model.norm_placement=peri", "model.qk_norm=true"],
}
ARCH = {"llama": "LlamaForCausalLM", "llama_bias_tied": "LlamaForCausalLM",
        "qwen3_qk_norm": "Qwen3ForCausalLM", "neox_layernorm_gelu": "GPTNeoXForCausalLM",
        "neox_no_bias": "GPTNeoXForCausalLM",
        "llama_mup_folded": "LlamaForCausalLM", "qwen3_mup_folded": "Qwen3ForCausalLM",
        "llama_mup_tied_folded": "LlamaForCausalLM",
        "llama_sigma_reparam_folded": "LlamaForCausalLM", "gemma2_peri": "Gemma2ForCausalLM",
        "gemma2_peri_tied_mup": "Gemma2ForCausalLM", "gemma3_peri_qk_norm": "Gemma3ForCausalLM"}


def cli_main(argv: list[str]) -> int:
    from pretrain.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code


def cfg_for(run_dir: Path, variant: str, *extra: str):
    return load_config(RECIPE, [*SMALL, *VARIANTS[variant], f"run.dir={run_dir}", *extra])


@pytest.fixture(scope="module", params=list(VARIANTS))
def trained(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    train(cfg_for(run_dir, request.param))
    return request.param, run_dir / "checkpoints/step_00000002"


def _hf_model(folder: Path):
    lib = transformers()
    model = lib.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32,
                                                     local_files_only=True)
    return model.eval()


def test_transformers_computes_our_logits_and_greedy_tokens(trained, tmp_path):
    variant, ckpt = trained
    folder = export_folder(ckpt, tmp_path / "hf", "hf", max_shard_bytes=100_000)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1  # sharded, with an index
    hf = _hf_model(folder)
    assert type(hf).__name__ == ARCH[variant]
    ours, _ = load_lm(ckpt)
    tokens = torch.randint(0, 256, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(tokens).logits - ours(tokens)).abs().max().item()
    assert diff <= 1e-5, f"{variant}: max abs logit difference {diff}"
    prompt = tokens[0, :12].tolist()
    want = generate(ours, prompt, 20)
    got = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                      pad_token_id=0)[0, len(prompt):].tolist()
    assert got == want


def test_export_import_export_is_bitwise(trained, tmp_path):
    variant, ckpt = trained
    first = export_folder(ckpt, tmp_path / "a", "hf", max_shard_bytes=100_000)
    new_run = tmp_path / "continued"
    if "sigma" in variant:  # folded W * gamma / sigma(W) cannot be split back
        with pytest.raises(ExportRefused, match="model.sigma_reparam"):
            import_folder(first, new_run / "checkpoints", cfg_for(new_run, variant), "hf")
        return
    imported = import_folder(first, new_run / "checkpoints", cfg_for(new_run, variant), "hf")
    if not any(folded in variant for folded in ("mup", "gemma")):
        # unfolded weights are the trained ones bit for bit (Gemma stores a gain w as w - 1,
        # which rounds for w < 0.5; its export -> import -> export is still bitwise)
        original, back = read_model_tensors(ckpt), read_model_tensors(imported)
        assert all(torch.equal(original[k], back[k]) for k in original)
    second = export_folder(imported, tmp_path / "b", "hf", max_shard_bytes=100_000)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_load_lm_applies_mup_multipliers(tmp_path):
    """`pretrain generate` (load_lm) must compute the trained model's function under muP: it
    used to skip the readout multiplier and attention scale."""
    from pretrain.models import build_model

    run_dir = tmp_path / "run"
    cfg = cfg_for(run_dir, "llama_mup_folded")
    train(cfg)
    ckpt = run_dir / "checkpoints/step_00000002"
    reference = build_model(cfg.model)
    reference.load_state_dict(read_model_tensors(ckpt))
    loaded, _ = load_lm(ckpt)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), reference.eval()(tokens))


@pytest.mark.parametrize("overrides, named", [
    (["model.norm_placement=peri", "model.norm=layernorm", "model.mlp=gelu"],
     "model.norm_placement=peri with model.norm=layernorm"),
    (["model.norm_placement=peri", "model.bias=true", "model.lm.tie_embeddings=true"],
     "model.bias=true with model.norm_placement=peri"),
    (["model.bias=true", "model.lm.tie_embeddings=false"], "head.bias"),
    (["model.norm=layernorm"], "model.norm=layernorm with model.mlp=swiglu"),
    (["model.qk_norm=true", "model.bias=true", "model.lm.tie_embeddings=true"], "model.qk_norm"),
])
def test_options_without_an_exact_equivalent_are_refused_by_name(overrides, named, tmp_path):
    from pretrain.interop.hf_lm import architecture

    cfg = load_config(RECIPE, [*SMALL, "model.bias=false", *overrides])
    with pytest.raises(ExportRefused, match=named.replace(".", r"\.")):
        architecture(cfg.model)


def test_cli_exports_a_run_with_its_tokenizer_and_imports_it_with_checks(tmp_path, capsys):
    """`pretrain ckpt export RUN OUT --format hf` ships the run's BPE tokenizer (transformers'
    AutoTokenizer encodes like ours, eos/pad ids in config.json); `ckpt import` of the folder
    refuses a recipe whose rope_theta differs (one line naming the key, exit 2)."""
    import json

    from data_pipeline.tokenizer import load_tokenizer, save_tokenizer, train_bpe

    texts = [f"document {i}: the quick brown fox jumps over {i % 7} lazy dogs." for i in range(200)]
    tok_path = save_tokenizer(train_bpe(texts, 300), str(tmp_path / "tok"))
    run_dir = tmp_path / "run"
    train(cfg_for(run_dir, "llama", "model.lm.vocab_size=320"))
    out = tmp_path / "hf"
    assert cli_main(["ckpt", "export", str(run_dir), str(out), "--format", "hf",
                     "--tokenizer", tok_path]) == 0
    ours = load_tokenizer(tok_path)
    theirs = transformers().AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert theirs(texts[3], add_special_tokens=False)["input_ids"] == ours.encode(texts[3])
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"]) == (ours.eos_id, ours.pad_id)
    assert theirs.eos_token_id == ours.eos_id

    capsys.readouterr()
    recipe = [str(RECIPE), *SMALL, "model.bias=false", "model.lm.vocab_size=320",
              f"run.dir={tmp_path / 'next'}"]
    code = cli_main(["ckpt", "import", str(out), str(tmp_path / "next/checkpoints"),
                     "--config", *recipe, "model.lm.rope_theta=500000"])
    err = capsys.readouterr().err
    assert code == 2 and "rope_theta=10000.0" in err and "500000" in err, err
    assert cli_main(["ckpt", "import", str(out), str(tmp_path / "next/checkpoints"),
                     "--config", *recipe]) == 0
    result = train(load_config(recipe[0], [*recipe[1:], "schedule.steps=2"]))  # continues
    assert result["step"] == 2 and (tmp_path / "next/checkpoints/step_00000002").is_dir()

    shard = sorted(out.glob("model-*.safetensors"))[0]
    shard.unlink()
    code = cli_main(["ckpt", "import", str(out), str(tmp_path / "again/checkpoints"),
                     "--config", *recipe])
    err = capsys.readouterr().err.strip()
    assert code == 2 and shard.name in err and len(err.splitlines()) == 1, err


def test_bf16_export_loads_in_bf16(trained, tmp_path):
    variant, ckpt = trained
    if variant != "llama":
        pytest.skip("one architecture is enough for the dtype")
    folder = export_folder(ckpt, tmp_path / "bf16", "hf", dtype=torch.bfloat16)
    hf = transformers().AutoModelForCausalLM.from_pretrained(folder, torch_dtype="auto",
                                                             local_files_only=True)
    original = read_model_tensors(ckpt)["tok_embed.weight"]
    assert hf.dtype == torch.bfloat16
    assert torch.equal(hf.model.embed_tokens.weight.data, original.bfloat16())


def test_neox_mlp_biases_must_be_zero_to_import_without_biases(trained, tmp_path):
    """GPT-NeoX's MLP always has biases; model.bias=false exports them as zeros, and a folder
    whose MLP bias is not zero computes something the model cannot: import names the tensor."""
    from pretrain.checkpoint.convert.mismatch import CheckpointMismatchError

    variant, ckpt = trained
    if variant != "neox_no_bias":
        pytest.skip("the bias-free GPT-NeoX only")
    hf = _hf_model(export_folder(ckpt, tmp_path / "hf", "hf"))
    assert hf.config.attention_bias is False
    assert not hf.gpt_neox.layers[1].mlp.dense_4h_to_h.bias.any()
    with torch.no_grad():
        hf.gpt_neox.layers[1].mlp.dense_4h_to_h.bias[3] = 0.25
    hf.save_pretrained(tmp_path / "changed", safe_serialization=True)
    new_run = tmp_path / "run"
    with pytest.raises(CheckpointMismatchError,
                       match=r"gpt_neox\.layers\.1\.mlp\.dense_4h_to_h\.bias is not zero"):
        import_folder(tmp_path / "changed", new_run / "checkpoints",
                      cfg_for(new_run, variant), "hf")


def test_a_model_saved_by_transformers_imports_and_computes_the_same_logits(tmp_path):
    """Continued pretraining from the ecosystem: a LlamaForCausalLM made and saved by
    transformers itself (random weights, norm gains too) imports into a run whose model then
    computes transformers' logits."""
    from pretrain.models import build_model

    lib = transformers()
    cfg = cfg_for(tmp_path / "run", "llama")
    m = cfg.model
    hf_cfg = lib.LlamaConfig(vocab_size=256, hidden_size=m.width, intermediate_size=176,
                             num_hidden_layers=m.depth, num_attention_heads=m.num_heads,
                             num_key_value_heads=m.num_heads, rms_norm_eps=1e-5,
                             max_position_embeddings=48, tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = lib.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    hf.save_pretrained(tmp_path / "saved", safe_serialization=True)
    ckpt = import_folder(tmp_path / "saved", tmp_path / "run/checkpoints", cfg, "hf")
    ours = build_model(m)
    ours.load_state_dict(read_model_tensors(ckpt))
    tokens = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (hf(tokens).logits - ours.eval()(tokens)).abs().max().item()
    assert diff <= 1e-5, diff
