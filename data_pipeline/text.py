"""Byte-level tokenization and packing of documents into fixed-length sequences.

Documents are UTF-8 bytes (ids 0..255) followed by EOS (256), concatenated and cut into
sequences of seq_len + 1 ids (inputs and shifted targets come from one sequence). Each sequence
records `doc_starts`, the offsets where a document begins inside it, so readers can reset
positions or mask attention at document boundaries. The last partial sequence is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

EOS_ID = 256
VOCAB_SIZE = 257


def encode_bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode_bytes(ids: Iterable[int]) -> str:
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def pack_documents(docs: Iterable[str], seq_len: int) -> Iterator[dict[str, np.ndarray]]:
    """Yield {"tokens": int32 [seq_len + 1], "doc_starts": int32 [k]} sequences."""
    width = seq_len + 1
    buf: list[np.ndarray] = []
    starts: list[int] = []
    filled = 0
    for doc in docs:
        ids = np.concatenate([encode_bytes(doc), np.asarray([EOS_ID], np.int32)])
        pos = 0
        while pos < len(ids):
            if filled == 0 or pos == 0:
                starts.append(filled)
            take = min(width - filled, len(ids) - pos)
            buf.append(ids[pos:pos + take])
            filled += take
            pos += take
            if filled == width:
                yield {"tokens": np.concatenate(buf).astype(np.int32),
                       "doc_starts": np.asarray(sorted(set(starts)), np.int32)}
                buf, starts, filled = [], [], 0
