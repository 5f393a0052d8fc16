"""Exponential moving average of the trained weights (Polyak averaging; DiT samples from it).

    ema <- decay * ema + (1 - decay) * w     after every optimizer step, from ema_0 = w_0

One fp32 tensor per trainable parameter, laid out as the parameter is: under FSDP2 (and TP)
the EMA of a DTensor shard is a DTensor with the same placements, so each rank updates only its
own shard (a local lerp, no communication) and DCP saves and reshards it like the weights.
Keys are canonical parameter names, so `ema.<name>` in a checkpoint sits next to `model.<name>`.
Under DeepSpeed ZeRO-1/2 every rank holds the full module (bf16 under bf16: its EMA is of
those rounded weights) and so the full EMA; ZeRO-3 is refused (pretrain/engines/deepspeed.py).
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

        fp32 weights: an exact swap, one parameter's copy in flight at a time; other dtypes
        (DeepSpeed's bf16 module): the weights are copied aside and back. Either way training
        after the block is bitwise what it would have been without it."""
        pairs = [(_local(p), _local(self.shadow[n])) for n, p in self.params.items()]
        exact = all(w.dtype == e.dtype for w, e in pairs)
        held = None if exact else [w.clone() for w, _ in pairs]
        if exact:
            self._swap(pairs)
        else:
            for weight, ema in pairs:
                weight.copy_(ema)
        try:
            yield
        finally:
            if exact:
                self._swap(pairs)
            else:
                for (w, _), saved in zip(pairs, held):
                    w.copy_(saved)

    @staticmethod
    def _swap(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for weight, ema in pairs:
            held = weight.clone()
            weight.copy_(ema)
            ema.copy_(held)
