"""Reaching the model inside an engine's wrapper (losses and eval hooks receive the wrapped one)."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper; FSDP2 and activation checkpointing keep the root as is.

    Call the wrapper for forwards (DDP's gradient hooks live there); read attributes here.
    """
    return getattr(model, "module", model)
