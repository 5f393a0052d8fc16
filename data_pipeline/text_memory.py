"""In-memory byte-level text: Python's own help topics, packed into fixed-length sequences.

The corpus is `pydoc_data.topics.topics` from the standard library of the running interpreter
(the text `help("if")` prints: 78 distinct documents, 466 KB of English prose and grammar on Python
3.11), so it is real text available offline, with no download and no extra dependency. It is
deterministic for a given Python version; loader states carry a fingerprint of the corpus, so a
checkpoint made on another version fails to resume with a clear message.

Tokens are UTF-8 bytes (vocabulary 256); every document ends with EOS = byte 0, which never
occurs in the text. Documents are split into train/val as whole documents (a fixed
permutation, independent of data.seed). Each split is one stream (documents in name order)
cut into rows of `seq_len` inputs; row i holds stream[i*L : i*L + L] with targets shifted by
one, so every byte is predicted exactly once. Rows carry
- doc_ids: which document each position belongs to, numbered from 0 within the row;
- position_ids: the position within that document, from 0 at its start (or at the row start);
- targets = IGNORE_INDEX where the next byte starts another document (after an EOS).
`TextSource` serves these rows to the shared loaders (`stream.py`) like any in-memory dataset:
the order is a pure function of (seed, epoch, global position), the state is that position, and
resuming at any world size neither repeats nor skips a row.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from data_pipeline.config import IGNORE_INDEX, DataConfig
from data_pipeline.memory import MemorySource
from data_pipeline.order import held_out

EOS = 0
VOCAB_SIZE = 256
KEYS = ("tokens", "targets", "position_ids", "doc_ids")


def load_documents() -> list[tuple[str, bytes]]:
    """(topic name, UTF-8 text) for every distinct Python help topic, in name order (a topic
    whose text repeats an earlier one's is dropped, so no text lands in both splits)."""
    from pydoc_data.topics import topics

    docs, seen = [], set()
    for name in sorted(topics):
        text = topics[name].encode("utf-8")
        if text not in seen:
            seen.add(text)
            docs.append((name, text))
    return docs


def fingerprint(docs: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, text in docs:
        h.update(name.encode() + b"\0" + text + b"\0")
    return h.hexdigest()[:16]


def split_documents(docs: list[tuple[str, bytes]], split: str, val_fraction: float) -> list[bytes]:
    """Whole documents of one split, in name order."""
    chosen = np.flatnonzero(held_out(len(docs), val_fraction) == (split == "val"))
    return [docs[i][1] for i in chosen]


def pack_documents(docs: list[bytes], seq_len: int) -> dict[str, np.ndarray]:
    """Documents -> rows [N, seq_len] of tokens, targets, position_ids, doc_ids (see module doc)."""
    stream, doc_of, pos = [], [], []
    for d, text in enumerate(docs):
        ids = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
        stream.append(np.append(ids, EOS))
        doc_of.append(np.full(len(ids) + 1, d, dtype=np.int64))
        pos.append(np.arange(len(ids) + 1, dtype=np.int64))
    stream_a, doc_a, pos_a = (np.concatenate(a) for a in (stream, doc_of, pos))
    rows = (len(stream_a) - 1) // seq_len
    if rows < 1:
        raise ValueError(f"text of {len(stream_a)} bytes is shorter than data.seq_len={seq_len}")
    idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None]
    window, window_doc = stream_a[idx], doc_a[idx]
    doc_ids = window_doc[:, :-1] - window_doc[:, :1]
    row_pos = pos_a[idx[:, :-1]]
    position_ids = np.where(doc_ids == 0, row_pos - row_pos[:, :1], row_pos)
    targets = np.where(window_doc[:, 1:] == window_doc[:, :-1], window[:, 1:], IGNORE_INDEX)
    return {
        "tokens": window[:, :-1],
        "targets": targets,
        "position_ids": position_ids,
        "doc_ids": doc_ids,
    }


def text_arrays(cfg: DataConfig, split: str) -> tuple[dict[str, np.ndarray], str]:
    """The packed rows of one split and the corpus fingerprint."""
    docs = load_documents()
    return pack_documents(split_documents(docs, split, cfg.val_fraction), cfg.seq_len), fingerprint(
        docs
    )


class TextSource(MemorySource):
    """The packed rows of one split as a batch source; its identity includes the corpus
    fingerprint, so a checkpoint made on another Python version fails to resume."""

    def __init__(self, cfg: DataConfig, split: str):
        arrays, self.fingerprint = text_arrays(cfg, split)
        super().__init__(arrays, cfg.seed, shuffle=split == "train", tokens_per_sample=cfg.seq_len)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "fingerprint": self.fingerprint}

    def mismatch_hint(self) -> str:
        return (
            f" (this text corpus has {self.num_samples} rows, fingerprint {self.fingerprint}:"
            " a different Python version or data.seq_len / data.val_fraction)"
        )

    def to_batch(self, idx: np.ndarray, ids: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {k: torch.from_numpy(np.ascontiguousarray(self.arrays[k][idx])) for k in KEYS}
        batch["sample_id"] = torch.from_numpy(ids.astype(np.int64))
        return batch
