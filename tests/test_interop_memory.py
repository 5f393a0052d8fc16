"""Exporting a >= 1 GB LM checkpoint to a transformers folder holds a few tensors, never the
checkpoint: peak RSS of the exporting process < 3 x the largest tensor + 500 MB."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env

SCRIPT = """
import json, sys, zlib
from pathlib import Path
import torch
mode, ckpt, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
OVERRIDES = ["model.width=1024", "model.depth=24", "model.num_heads=8", "model.bias=false",
             "model.lm.vocab_size=4096", "model.lm.seq_len=128", "data.seq_len=128"]

def value(name, shape):  # a pure function of the name: any tensor can be checked later
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(shape, generator=g)

if mode == "make":
    from pretrain.checkpoint.commit import TRAIN_STATE, commit, partial_dir
    from pretrain.checkpoint.convert.sinks import write_dcp
    from pretrain.config import load_config, to_dict
    from pretrain.interop.adapters import _param_shapes
    from pretrain.interop.plan import Entry, PlanSource
    cfg = load_config("configs/lm_bytes.yaml", OVERRIDES)
    shapes = _param_shapes(cfg.model)
    plan = PlanSource([Entry(n, s, lambda read, n=n, s=s: value(n, s)) for n, s in shapes.items()],
                      read=None)
    partial = partial_dir(ckpt)
    write_dcp(plan, partial / "model", optimizer=False, sync=False)
    (partial / TRAIN_STATE).write_text(json.dumps({"step": 1, "config": to_dict(cfg)}))
    commit(partial, ckpt, 1)
    sizes = [4 * torch.Size(s).numel() for s in shapes.values()]
    info = {"total": sum(sizes), "largest": max(sizes)}
else:
    from pretrain.interop import export_folder
    export_folder(ckpt, out, "hf", max_shard_bytes=256 * 2**20)
    info = {}
from pretrain.metrics import peak_rss_bytes
info["peak_rss"] = peak_rss_bytes()
print(json.dumps(info))
"""


def _run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_hf_export_of_a_1gb_checkpoint_stays_under_the_bound(tmp_path):
    ckpt = tmp_path / "run/checkpoints/step_00000001"
    made = _run("make", str(ckpt), "-")
    bound = 3 * made["largest"] + 500 * 2**20
    assert made["total"] >= 2**30 and made["total"] > 2 * bound
    export = _run("export", str(ckpt), str(tmp_path / "hf"))
    figures = (f"checkpoint {made['total'] / 2**20:.0f} MiB, largest tensor "
               f"{made['largest'] / 2**20:.0f} MiB, export peak RSS "
               f"{export['peak_rss'] / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB")
    print(figures)
    assert export["peak_rss"] < bound, figures
    from safetensors import safe_open

    index = json.loads((tmp_path / "hf/model.safetensors.index.json").read_text())
    name = "model.layers.23.mlp.up_proj.weight"
    with safe_open(str(tmp_path / "hf" / index["weight_map"][name]), framework="pt") as f:
        up = f.get_tensor(name)
    import zlib

    import torch

    g = torch.Generator().manual_seed(zlib.crc32(b"blocks.23.mlp.fc1.weight"))
    fc1 = torch.randn((2 * up.shape[0], up.shape[1]), generator=g)
    assert torch.equal(up, fc1[up.shape[0]:])
