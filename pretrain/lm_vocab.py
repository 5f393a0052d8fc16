"""The LM's vocabulary taken from its dataset, and bits per byte next to perplexity.

`model.lm.vocab_size: 0` means "the dataset's": the manifest's vocab_size (written by
`data build text` with the tokenizer) fills it in before the model is built, and the saved
run config records the number. A model vocabulary smaller than the data's (ids the embedding
cannot hold) is a one-line error naming both; a larger one is allowed (padded vocabularies,
e.g. 50304 for GPT-2's 50257, are faster on GPUs and never see the extra ids).
"""

from __future__ import annotations

import math

from data_pipeline.config import DataConfig
from data_pipeline.dataset_meta import token_meta
from pretrain.models.config import ModelConfig


class VocabMismatchError(ValueError):
    pass


def resolve_vocab(model: ModelConfig, data: DataConfig) -> dict:
    """Fill model.lm.vocab_size from the data (when 0) or check it; returns the token meta."""
    if model.family != "lm":
        return {}
    meta = token_meta(data, "train")
    data_vocab = int(meta.get("vocab_size", 0))
    where = meta.get("url") or f"data.format={data.format} data.name={data.name}"
    if model.lm.vocab_size == 0:
        if not data_vocab:
            raise VocabMismatchError(f"model.lm.vocab_size=0 takes the vocabulary from the dataset,"
                                     f" but {where} records none (set model.lm.vocab_size)")
        model.lm.vocab_size = data_vocab
    elif data_vocab and model.lm.vocab_size < data_vocab:
        specials = ", ".join(f"{k}={meta[k]}" for k in ("eos_id", "pad_id") if k in meta)
        raise VocabMismatchError(
            f"model.lm.vocab_size={model.lm.vocab_size} is smaller than the vocabulary of the"
            f" data {where}: vocab_size={data_vocab} ({specials}, tokenizer"
            f" {meta.get('tokenizer', '?')}); set model.lm.vocab_size=0 to take it from the data")
    return meta


def bits_per_byte(results: dict[str, float], meta: dict) -> dict[str, float]:
    """Validation loss (nats per token) in bits per UTF-8 byte of the text, comparable across
    tokenizers: loss / ln 2 / (bytes per token of the validation split)."""
    bpt = meta.get("bytes_per_token")
    if not bpt or not math.isfinite(results.get("loss", float("nan"))):
        return {}
    return {"bits_per_byte": results["loss"] / math.log(2) / float(bpt)}
