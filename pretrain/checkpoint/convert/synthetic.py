"""A checkpoint source that makes its tensors on demand, for benchmarks and memory tests:
checkpoints of any size can be written and converted without ever holding more than a tensor."""

from __future__ import annotations

import zlib
from collections import OrderedDict

import torch

from pretrain.checkpoint.convert.sources import KINDS, PARAM, Source, TensorInfo


class SyntheticSource(Source):
    """`count` parameters of `shape`, with Adam moments and step; values are a pure function of
    (name, kind), so a reader can check any tensor without keeping the originals."""

    format = "synthetic"

    def __init__(self, count: int, shape: tuple[int, ...], step: int = 7):
        super().__init__()
        self.params = OrderedDict(
            (f"layers.{i}.weight", TensorInfo(f"layers.{i}.weight", shape, torch.float32))
            for i in range(count)
        )
        self.param_groups = [
            {
                "lr": 1e-3,
                "weight_decay": 0.0,
                "lr_mult": 1.0,
                "wd_mult": 1.0,
                "betas": (0.9, 0.95),
                "eps": 1e-8,
                "params": list(self.params),
            }
        ]
        self._step = step
        self.meta = {"format": "synthetic"}

    def read(self, name: str, kind: str = PARAM) -> torch.Tensor:
        assert kind in KINDS
        g = torch.Generator().manual_seed(zlib.crc32(f"{name}/{kind}".encode()))
        t = torch.randn(self.params[name].shape, generator=g)
        return t.abs_() if kind == "exp_avg_sq" else t

    def step(self, name: str) -> torch.Tensor:
        return torch.tensor(float(self._step))
