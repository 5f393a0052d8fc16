"""`pretrain data build text --tokenizer PATH`: documents -> subword ids (in K worker
processes) -> packed rows -> WDS or MDS shards, with the tokenizer described in the manifest.

Documents are split into train/val as whole documents (the fixed split of `order.held_out`, as
the byte-level build does). Workers tokenize chunks of documents in order (`Pool.imap`), so the
shards do not depend on K. Ids are stored as uint16 when the vocabulary fits, else uint32. The
manifest's meta holds the vocabulary size, special ids, tokenizer sha256 and bytes per token
of the split (for bits per byte); the tokenizer itself is copied to OUT/tokenizer.json.

A build is resumable: every finished shard is journaled with the position after it
(`build_journal.py`); running the same command after a crash keeps the shards that still hash
to their recorded sha256 and continues after them, with the same bytes an uninterrupted build
writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from multiprocessing import get_context
from typing import Any

from data_pipeline.build_journal import BuildJournal
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


class Encoder:
    """Token ids of documents, chunk by chunk in document order, by `workers` spawned processes
    started once per build, at the first documents to encode (0 or 1: in this process, with the
    tokenizer's own threads). Use as a context manager: leaving it stops the processes."""

    def __init__(self, tok: TextTokenizer, workers: int):
        self.tok, self.workers = tok, workers
        self._pool: Any = None

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __call__(self, docs: list[str]) -> Iterator[list[list[int]]]:
        chunks = _chunks(docs, CHUNK_DOCS)
        if self.workers <= 1:
            for chunk in chunks:
                yield self.tok.encode_batch(chunk)
            return
        if self._pool is None and docs:
            self._pool = get_context("spawn").Pool(self.workers, _init_worker, (self.tok,))
        if docs:
            yield from self._pool.imap(_encode_chunk, chunks, chunksize=1)


def documents_digest(docs: list[str]) -> tuple[str, int]:
    """(sha256 over the documents, their UTF-8 bytes): what a resumed build must see again."""
    digest, size = hashlib.sha256(), 0
    for doc in docs:
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        size += len(data)
    return digest.hexdigest(), size


def _position_ok(position: dict, documents: int, vocab_size: int) -> bool:
    """A journaled position this build could have reached (the journal is not trusted)."""
    docs, tokens = position.get("docs"), position.get("tokens")
    carry, starts = position.get("carry"), position.get("carry_starts")
    if not (type(docs) is int and type(tokens) is int and 0 <= docs <= documents
            and tokens >= 0 and isinstance(carry, list) and isinstance(starts, list)):
        return False
    return (len(carry) <= tokens
            and all(type(t) is int and 0 <= t < vocab_size for t in carry)
            and all(type(i) is int and 0 <= i < len(carry) for i in starts)
            and starts == sorted(starts))


def build_split(docs: list[str], writer: WdsWriter | MdsWriter, tok: TextTokenizer,
                seq_len: int, encode: Encoder, settings: dict) -> Manifest:
    """Tokenize, pack and write one split, shard by shard through a `BuildJournal`: after a
    crash the finished shards are kept (verified by their sha256) and the build continues at
    the document and packer carry-over journaled with the last of them."""
    journal = BuildJournal(writer, settings,
                           lambda p: _position_ok(p, len(docs), tok.vocab_size))
    position = journal.resume() or {"docs": 0, "tokens": 0, "carry": [], "carry_starts": []}
    packer = Packer(seq_len, tok.eos_id, token_dtype(tok.vocab_size))
    packer.load_state_dict(position)
    done, tokens, in_shard = int(position["docs"]), int(position["tokens"]), 0
    per_shard = writer.samples_per_shard
    for chunk in encode(docs[done:]):
        for ids in chunk:  # one document at a time: a shard ends at an exact position
            packer.feed([ids])
            done, tokens = done + 1, tokens + len(ids) + 1
            while packer.ready:
                rows = packer.take(min(packer.ready, per_shard - in_shard))
                for row in rows:
                    writer.write(row)
                in_shard += len(rows)
                if in_shard == per_shard:
                    journal.shard_done({"docs": done, "tokens": tokens,
                                        **packer.state_dict()})
                    in_shard = 0
    journal.shard_done({"docs": done, "tokens": tokens, **packer.state_dict()})
    writer.meta.update(documents=len(docs), text_bytes=settings["text_bytes"],
                       text_tokens=tokens, bytes_per_token=settings["text_bytes"] / max(tokens, 1))
    return writer.finish()


def build_tokenized_text(src: list[str], out: str, fmt: str, tok: TextTokenizer, seq_len: int,
                         workers: int = 1, shard_samples: int = 1000, val_fraction: float = 0.2,
                         field: str = "text") -> dict[str, Manifest]:
    """Write OUT/train and OUT/val shards of packed rows; returns their manifests. Running it
    again after a crash continues the build (`build_split`)."""
    docs = list(read_documents(src, field))
    is_val = held_out(len(docs), val_fraction)
    os.makedirs(out, exist_ok=True)
    shutil.copyfile(tok.path, os.path.join(out, TOKENIZER_FILE))
    manifests = {}
    with Encoder(tok, workers) as encode:
        for split, want in (("train", False), ("val", True)):
            if part := [d for d, v in zip(docs, is_val) if v == want]:
                manifests[split] = _build_split_of(part, split, src, out, fmt, tok, seq_len,
                                                   shard_samples, encode)
    return manifests


def _build_split_of(part: list[str], split: str, src: list[str], out: str, fmt: str,
                    tok: TextTokenizer, seq_len: int, shard_samples: int,
                    encode: Encoder) -> Manifest:
    """OUT/<split>: the writer, the manifest meta and the journal settings of one split."""
    dtype = token_dtype(tok.vocab_size)
    meta = {"kind": "tokens", "name": os.path.basename(src[0]), "seq_len": seq_len,
            **tok.token_meta(), "dtype": dtype.name}
    writer = (WdsWriter if fmt == "wds" else MdsWriter)(os.path.join(out, split), shard_samples,
                                                        meta=meta)
    digest, text_bytes = documents_digest(part)
    settings = {"documents_sha256": digest, "documents": len(part), "text_bytes": text_bytes,
                "tokenizer_sha256": tok.sha256, "seq_len": seq_len, "format": fmt,
                "shard_samples": shard_samples}
    return build_split(part, writer, tok, seq_len, encode, settings)
