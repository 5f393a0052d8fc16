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
    """Rows of `seq_len + 1` ids out of documents. Fed documents wait in a buffer (with the
    offsets where they start) until whole rows are taken, so the buffer is the exact state."""

    def __init__(self, seq_len: int, eos_id: int, dtype: np.dtype | type = np.int32):
        self.width, self.eos_id, self.dtype = seq_len + 1, eos_id, np.dtype(dtype)
        self._parts: list[np.ndarray] = []
        self._starts: list[int] = []
        self._size = 0

    @property
    def ready(self) -> int:
        """Whole rows in the buffer."""
        return self._size // self.width

    def state_dict(self) -> dict:
        buf = self._buffer()
        return {"carry": buf.tolist(), "carry_starts": list(self._starts)}

    def load_state_dict(self, state: dict) -> None:
        carry = np.asarray(state["carry"], self.dtype)
        self._parts, self._size = [carry], len(carry)
        self._starts = [int(x) for x in state["carry_starts"]]

    def feed(self, docs: Iterable[Iterable[int]]) -> None:
        eos = np.asarray([self.eos_id], self.dtype)
        for doc in docs:
            ids = np.asarray(doc, self.dtype)
            self._starts.append(self._size)
            self._parts += [ids, eos]
            self._size += len(ids) + 1

    def _buffer(self) -> np.ndarray:
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts
                           else np.zeros(0, self.dtype)]
        return self._parts[0]

    def take(self, rows: int) -> list[dict[str, np.ndarray]]:
        """The next `rows` rows (at most `ready`): {"tokens": [seq_len + 1], "doc_starts": [k]}."""
        rows = min(rows, self.ready)
        flat, starts = self._buffer(), np.asarray(self._starts, np.int64)
        bounds = np.searchsorted(starts, np.arange(rows + 1) * self.width)
        out = []
        for r in range(rows):
            begin = r * self.width
            inner = starts[bounds[r]:bounds[r + 1]] - begin
            if not inner.size or inner[0] != 0:
                inner = np.concatenate([[0], inner])
            out.append({"tokens": flat[begin:begin + self.width].copy(),
                        "doc_starts": inner.astype(np.int32)})
        used = rows * self.width
        self._parts, self._size = [flat[used:].copy()], len(flat) - used
        self._starts = (starts[bounds[rows]:] - used).tolist()
        return out

    def add(self, docs: Iterable[Iterable[int]]) -> Iterator[dict[str, np.ndarray]]:
        """Feed `docs` and yield every row they complete."""
        self.feed(docs)
        yield from self.take(self.ready)
