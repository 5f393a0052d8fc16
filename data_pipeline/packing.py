"""Packing tokenized documents into fixed-length sequences, document boundaries kept.

Documents (token ids, each followed by end-of-document) are concatenated and cut into rows of
seq_len + 1 ids; each row records `doc_starts`, the offsets where a document begins inside it
(always 0 first: a row starts a document or continues one). The carry-over (ids of the last,
incomplete row) is the packer's whole state, so packing can continue in another process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (half the bytes for vocabularies up to 65536)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class Packer:
    """Rows of `seq_len + 1` ids out of documents, vectorised per batch of documents."""

    def __init__(self, seq_len: int, eos_id: int, dtype: np.dtype | type = np.int32):
        self.width, self.eos_id, self.dtype = seq_len + 1, eos_id, np.dtype(dtype)
        self.carry = np.zeros(0, self.dtype)
        self.carry_starts = np.zeros(0, np.int64)

    def state_dict(self) -> dict:
        return {"carry": self.carry.tolist(), "carry_starts": self.carry_starts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.carry = np.asarray(state["carry"], self.dtype)
        self.carry_starts = np.asarray(state["carry_starts"], np.int64)

    def add(self, docs: Iterable[Iterable[int]]) -> Iterator[dict[str, np.ndarray]]:
        """Yield the rows completed by `docs`: {"tokens": [seq_len + 1], "doc_starts": [k]}."""
        parts, starts, offset = [self.carry], [self.carry_starts], len(self.carry)
        eos = np.asarray([self.eos_id], self.dtype)
        for doc in docs:
            ids = np.asarray(doc, self.dtype)
            parts += [ids, eos]
            starts.append(np.asarray([offset], np.int64))
            offset += len(ids) + 1
        flat, starts_all = np.concatenate(parts), np.concatenate(starts)
        rows = len(flat) // self.width
        bounds = np.searchsorted(starts_all, np.arange(rows + 1) * self.width)
        for r in range(rows):
            begin = r * self.width
            inner = starts_all[bounds[r]:bounds[r + 1]] - begin
            if not inner.size or inner[0] != 0:
                inner = np.concatenate([[0], inner])
            yield {"tokens": flat[begin:begin + self.width].copy(),
                   "doc_starts": inner.astype(np.int32)}
        self.carry = flat[rows * self.width:].copy()
        self.carry_starts = starts_all[bounds[rows]:] - rows * self.width
