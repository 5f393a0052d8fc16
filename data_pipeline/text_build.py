"""`pretrain data build text --tokenizer PATH`: documents -> subword ids (in K worker
processes) -> packed rows -> WDS or MDS shards, with the tokenizer described in the manifest.

Documents are split into train/val as whole documents (the fixed split of `order.held_out`, as
the byte-level build does). Workers tokenize chunks of documents in order (`Pool.imap`), so the
shards do not depend on K. Ids are stored as uint16 when the vocabulary fits, else uint32. The
manifest's meta holds the vocabulary size, special ids, tokenizer sha256 and bytes per token
of the split (for bits per byte); the tokenizer itself is copied to OUT/tokenizer.json.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from multiprocessing import get_context

from data_pipeline.manifest import Manifest
from data_pipeline.order import held_out
from data_pipeline.packing import Packer, token_dtype
from data_pipeline.tokenizer import TOKENIZER_FILE, TextTokenizer, read_documents
from data_pipeline.writers import MdsWriter, WdsWriter

CHUNK_DOCS = 256  # documents per task handed to a worker

_worker_tokenizer: TextTokenizer | None = None


def _init_worker(tok: TextTokenizer) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core
    _worker_tokenizer = tok


def _encode_chunk(texts: list[str]) -> list[list[int]]:
    return _worker_tokenizer.encode_batch(texts)


def _chunks(docs: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(docs), size):
        yield docs[i:i + size]


def tokenized(docs: list[str], tok: TextTokenizer, workers: int) -> Iterator[list[list[int]]]:
    """Token ids of `docs`, chunk by chunk in document order, encoded by `workers` processes
    (0 or 1: in this process, with the tokenizer's own threads)."""
    if workers <= 1:
        for chunk in _chunks(docs, CHUNK_DOCS):
            yield tok.encode_batch(chunk)
        return
    with get_context("spawn").Pool(workers, _init_worker, (tok,)) as pool:
        yield from pool.imap(_encode_chunk, _chunks(docs, CHUNK_DOCS), chunksize=1)


def build_tokenized_text(src: list[str], out: str, fmt: str, tok: TextTokenizer, seq_len: int,
                         workers: int = 1, shard_samples: int = 1000, val_fraction: float = 0.2,
                         field: str = "text") -> dict[str, Manifest]:
    """Write OUT/train and OUT/val shards of packed rows; returns their manifests."""
    docs = list(read_documents(src, field))
    is_val = held_out(len(docs), val_fraction)
    dtype = token_dtype(tok.vocab_size)
    os.makedirs(out, exist_ok=True)
    shutil.copyfile(tok.path, os.path.join(out, TOKENIZER_FILE))
    manifests = {}
    for split, want in (("train", False), ("val", True)):
        part = [d for d, v in zip(docs, is_val) if v == want]
        if not part:
            continue
        meta = {"kind": "tokens", "name": os.path.basename(src[0]), "seq_len": seq_len,
                **tok.token_meta(), "dtype": dtype.name}
        path = os.path.join(out, split)
        writer = (WdsWriter if fmt == "wds" else MdsWriter)(path, shard_samples, meta=meta)
        packer = Packer(seq_len, tok.eos_id, dtype)
        tokens = 0
        for ids in tokenized(part, tok, workers):
            tokens += sum(len(x) + 1 for x in ids)
            for row in packer.add(ids):
                writer.write(row)
        text_bytes = sum(len(d.encode("utf-8")) for d in part)
        writer.meta.update(documents=len(part), text_bytes=text_bytes, text_tokens=tokens,
                           bytes_per_token=text_bytes / max(tokens, 1))
        manifests[split] = writer.finish()
    return manifests

