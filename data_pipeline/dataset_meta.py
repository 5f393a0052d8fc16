"""What a dataset says about its tokens, read before the model is built: vocabulary size,
special ids, tokenizer, bytes per token (for bits per byte). One place: the manifest's meta
(written by `data build text`), so the model recipe has no second copy to keep in sync.
"""

from __future__ import annotations

import json

from data_pipeline.config import DataConfig
from data_pipeline.manifest import MANIFEST_NAME

TOKEN_KEYS = ("kind", "vocab_size", "eos_id", "pad_id", "tokenizer", "tokenizer_sha256",
              "seq_len", "bytes_per_token")


def dataset_url(cfg: DataConfig, split: str) -> str:
    if split == "train" and cfg.mixture:
        return sorted(cfg.mixture)[0]
    return cfg.train_url if split == "train" else cfg.val_url


def token_meta(cfg: DataConfig, split: str = "train") -> dict:
    """The token fields of the dataset's manifest meta ({} for image data or no manifest);
    the byte-level in-memory text reports its own (vocabulary 256, EOS 0)."""
    if cfg.format == "memory":
        if cfg.name != "text":
            return {}
        from data_pipeline.text_memory import EOS, VOCAB_SIZE, load_documents, split_documents

        docs = split_documents(load_documents(), split, cfg.val_fraction)
        size = sum(len(d) for d in docs)
        return {"kind": "tokens", "vocab_size": VOCAB_SIZE, "eos_id": EOS, "tokenizer": "bytes",
                "bytes_per_token": size / (size + len(docs))}
    url = dataset_url(cfg, split)
    if cfg.format not in ("wds", "mds") or not url:
        return {}
    if cfg.tokenizer:  # raw text, tokenized on the fly: the tokenizer says
        from data_pipeline.tokenizer import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
        return {"kind": "tokens", **tok.token_meta(), "seq_len": cfg.seq_len, "url": url}
    meta = manifest_meta(cfg, split)
    return {k: meta[k] for k in TOKEN_KEYS if k in meta} | {"url": url}


def manifest_meta(cfg: DataConfig, split: str = "train") -> dict:
    """The whole meta of a shard set's manifest ({} for in-memory data or no manifest), e.g. a
    latent set's VAE identity and scaling factor."""
    url = dataset_url(cfg, split)
    if cfg.format not in ("wds", "mds") or not url:
        return {}
    from data_pipeline.shard_urls import split_shard_spec
    from data_pipeline.storage import ShardStore

    root, _ = split_shard_spec(url, cfg.storage_options)
    raw = ShardStore(root, cfg.storage_options).read_small(MANIFEST_NAME)
    return json.loads(raw).get("meta", {}) if raw is not None else {}
