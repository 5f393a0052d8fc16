"""tokens/s, FLOPs and MFU in metrics.jsonl come from the batches actually trained, not from
the model's configured length; a context shorter than the data is a config error at load."""

from __future__ import annotations

import pytest

from pretrain.config import ConfigError, load_config
from pretrain.metrics import PEAK_FLOPS, peak_for
from pretrain.models import build_model
from pretrain.run_dir import read_metrics
from pretrain.trainer import train
from tests.conftest import REPO

LM = ["model.width=32", "model.depth=2", "model.num_heads=2", "model.attn_entropy=false",
      "data.name=synthetic_tokens", "data.global_batch_size=8", "parallel.backend=single",
      "schedule.steps=4", "schedule.warmup_steps=1", "logging.every_steps=2",
      "logging.eval_every_steps=0", "logging.progress_bar=false", "logging.tensorboard=false",
      "checkpoint.every_steps=0", "checkpoint.save_at_end=false", "logging.peak_tflops=1.0"]


def test_lm_tokens_and_mfu_follow_the_batch_not_the_context(tmp_path):
    cfg = load_config(REPO / "configs/lm_bytes.yaml",
                      [*LM, "data.seq_len=16", "model.lm.seq_len=64", f"run.dir={tmp_path}"])
    train(cfg)
    model = build_model(cfg.model)
    for record in (r for r in read_metrics(tmp_path) if r["split"] == "train"):
        sps = record["samples_per_s"]
        assert record["tokens_per_s"] == pytest.approx(sps * 16, rel=1e-6)
        assert record["tokens"] == record["samples"] * 16
        assert record["flops"] == record["samples"] * model.flops_per_sample(16)
        assert record["mfu"] == pytest.approx(sps * model.flops_per_sample(16) / 1e12, rel=1e-6)
    assert model.flops_per_sample(16) < model.flops_per_sample() / 4  # the old figure: >4x


def test_data_longer_than_the_lm_context_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.seq_len=128 is longer than .*model.lm.seq_len=64"):
        load_config(REPO / "configs/lm_bytes.yaml",
                    [*LM, "data.seq_len=128", "model.lm.seq_len=64"])


@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),  # SXM
    ("NVIDIA H100 PCIe", "bf16", 756e12),
    ("NVIDIA H100 PCIe", "tf32", 378e12),
    ("NVIDIA H200", "bf16", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA A100-PCIE-40GB", "tf32", 156e12),
    ("NVIDIA A100-SXM4-40GB", "fp32", 19.5e12),
    ("NVIDIA A10", "bf16", 125e12),
    ("Some New GPU", "bf16", None),
])
def test_peak_flops_by_device_and_dtype(name, dtype, peak):
    assert peak_for(name, dtype) == peak
    assert len(PEAK_FLOPS) >= 5
