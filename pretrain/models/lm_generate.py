"""Autoregressive decoding for the decoder LM: greedy or top-k sampling.

No KV cache: each step re-runs the model on the last `model.seq_len` tokens, which keeps the
model code single-purpose and is fast enough for the small models this command is for.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    top_k: int = 1,
    temperature: float = 1.0,
    stop_token: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The new tokens after `prompt`. top_k=1 (or temperature=0) is greedy; top_k=0 samples
    from the full distribution; sampling draws from `generator` (CPU) for reproducibility."""
    if not prompt:
        raise ValueError("the prompt must contain at least one token")
    model.eval()
    device = next(model.parameters()).device
    ids = list(prompt)
    new: list[int] = []
    for _ in range(max_new_tokens):
        context = torch.tensor(ids[-model.seq_len :], device=device)[None]
        logits = model(context)[0, -1].float().cpu()
        if top_k == 1 or temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
        if token == stop_token:
            break
        ids.append(token)
        new.append(token)
    return new
