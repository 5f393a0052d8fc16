"""Exponential moving average of the trained weights (Polyak averaging; DiT samples from it).

    ema <- decay * ema + (1 - decay) * w     after every optimizer step, from ema_0 = w_0

One fp32 tensor per trainable parameter, laid out as the parameter is: under FSDP2 (and TP)
the EMA of a DTensor shard is a DTensor with the same placements, so each rank updates only its
own shard (a local lerp, no communication) and DCP saves and reshards it like the weights.
Keys are canonical parameter names, so `ema.<name>` in a checkpoint sits next to `model.<name>`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pretrain import compat
from pretrain.optim import canonical_name


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds (a DTensor's shard, a plain tensor itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


class WeightEMA:
    """The EMA of `model`'s trainable parameters with factor `decay`."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params: dict[str, nn.Parameter] = {
            canonical_name(n): p for n, p in model.named_parameters() if p.requires_grad
        }
        with torch.no_grad():
            self.shadow: dict[str, torch.Tensor] = {
                n: p.detach().float().clone() for n, p in self.params.items()
            }

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step towards the current weights (on device, no host sync)."""
        ema = [_local(e) for e in self.shadow.values()]
        weights = [_local(p).float() for p in self.params.values()]
        compat.foreach_lerp_(ema, weights, 1.0 - self.decay)

    @torch.no_grad()
    def restart(self) -> None:
        """EMA := the current weights (a checkpoint that holds none, e.g. EMA newly enabled)."""
        for name, p in self.params.items():
            _local(self.shadow[name]).copy_(_local(p))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The live tensors: a DCP load writes into them in place."""
        return self.shadow

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self) -> Iterator[None]:
        """The model holds the EMA weights inside the block, its own weights again after it.

        An exact swap (fp32 on both sides), one parameter's copy in flight at a time, so
        training after the block is bitwise what it would have been without it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for name, p in self.params.items():
            weight, ema = _local(p), _local(self.shadow[name])
            if weight.dtype != ema.dtype:
                raise TypeError(f"cannot swap the EMA of {name}: the weight is {weight.dtype}")
            held = weight.clone()
            weight.copy_(ema)
            ema.copy_(held)
