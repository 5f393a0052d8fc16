"""Raw-text shards (MDS `text: str`, WDS `.txt` / `.json`) tokenized on the fly and packed.

With `data.tokenizer` set, a wds / mds dataset holds documents, not token rows. The global
stream of rows is a pure function of (seed, position): documents in the shard-aware global
order of `order.py` (epoch after epoch), tokenized, each followed by end-of-document, packed
into rows of seq_len + 1 ids (`packing.Packer`). Micro-batch k is rows [kM, (k+1)M) of that
stream (M = global_batch / grad_accum); rank r takes its contiguous slice, so the stream does
not depend on the world size.

Tokenizing is the expensive part: DataLoader workers tokenize chunks of `CHUNK_DOCS` documents
(worker w takes chunks w, w+W, ...; the DataLoader hands them out round-robin, i.e. in document
order), and the main process packs them, which is cheap. Every rank tokenizes the whole global
stream (the price of world-size independence: the documents of a row are known only after the
rows before it are packed).

The state is a position in the document order plus the packer's buffer: `{"rows": rows handed
out, "docs": documents fed to the packer, "carry": ids not yet handed out, "carry_starts":
document starts among them}`. Resuming refills the packer and continues at document `docs`,
at any world size whose ranks divide the micro-batch, neither repeating nor skipping a row.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from data_pipeline.config import IGNORE_INDEX, DataConfig
from data_pipeline.decode import decode_field
from data_pipeline.memory import MemorySource
from data_pipeline.order import rank_slice
from data_pipeline.packing import Packer
from data_pipeline.source import ShardedSource
from data_pipeline.stream import WorkerError, budget_samples, pin_batches, unwrap, worker_stream
from data_pipeline.tokenizer import TextTokenizer, _text_of, load_tokenizer
from data_pipeline.transforms import TokenRows

CHUNK_DOCS = 64  # documents a worker tokenizes per task
STATE_VERSION = 1


class DocumentChunks(torch.utils.data.IterableDataset):
    """(first document position, token ids of CHUNK_DOCS documents) from position `start` on,
    endlessly; chunks are split round-robin over DataLoader workers."""

    def __init__(self, source: ShardedSource, tok: TextTokenizer, field: str, start: int):
        self.source, self.tok, self.field, self.start = source, tok, field, start

    def chunk(self, first: int) -> tuple[int, list[np.ndarray]]:
        ids = self.source.order.ids(np.arange(first, first + CHUNK_DOCS))
        shards, index = self.source.order.locate(ids)
        texts = []
        for shard, i in zip(shards.tolist(), index.tolist()):
            name, key, raw = self.source.read_at(shard, i)
            texts.append(_text_of(raw, self.field, f"{name} sample {key!r}", decode_field))
        return first, [np.asarray(x, np.int64) for x in self.tok.encode_batch(texts)]

    def __iter__(self) -> Iterator[tuple[int, list[np.ndarray]] | WorkerError]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism
        j = worker
        while True:
            try:
                chunk = self.chunk(self.start + j * CHUNK_DOCS)
            except Exception as e:  # handed over as a value, like `stream.BatchStream`
                yield WorkerError(e, traceback.format_exc())
                return
            yield chunk
            j += workers


def _identity(x: Any) -> Any:
    return x


class RawTextTrainLoader:
    """`contract.TrainLoader` over raw-text shards (see the module docstring)."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int, grad_accum: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.tok = load_tokenizer(cfg.tokenizer)
        self.source = ShardedSource(cfg.train_url, cfg.format, cfg, shuffle=cfg.shuffle)
        self.rows = TokenRows(cfg, cfg.seq_len)
        self.micro_global = cfg.global_batch_size // grad_accum
        rank_slice(0, self.micro_global, rank, world_size)  # checks that the ranks divide it
        self.stop = budget_samples(cfg, cfg.seq_len)
        self.pin = pin_batches(cfg)
        self.state = {"rows": 0, "docs": 0, "carry": [], "carry_starts": []}

    @property
    def consumed(self) -> int:
        """Sequences handed out by all ranks (`contract.TrainLoader`'s position)."""
        return self.state["rows"]

    @property
    def num_documents(self) -> int:
        return self.source.num_samples

    def identity(self) -> dict[str, Any]:
        return {"seed": self.cfg.seed, "num_documents": self.num_documents,
                "seq_len": self.cfg.seq_len, "tokenizer_sha256": self.tok.sha256}

    def _chunks(self, start: int) -> Iterator[tuple[int, list[np.ndarray]]]:
        chunks = DocumentChunks(self.source, self.tok, self.cfg.text_field, start)
        if self.cfg.loader_workers == 0:
            return map(unwrap, chunks)
        # spawned: a forked copy of a tokenizer that has used its threads can deadlock
        return worker_stream(chunks, self.cfg, self.cfg.loader_workers, _identity, "spawn")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        packer = Packer(self.cfg.seq_len, self.tok.eos_id, np.int64)
        packer.load_state_dict(self.state)
        docs, m = self.state["docs"], self.micro_global
        mine = rank_slice(0, m, self.rank, self.world_size)
        chunks = self._chunks(docs)
        while not self.stop or self.state["rows"] < self.stop:
            while packer.ready < m:
                first, ids = next(chunks)
                assert first == docs, (first, docs)  # chunks arrive in document order
                packer.feed(ids)
                docs += len(ids)
            rows = packer.take(m)
            first_row = self.state["rows"]
            self.state = {"rows": first_row + m, "docs": docs, **packer.state_dict()}
            batch = self.rows.collate([self.rows.row(r["tokens"], r["doc_starts"])
                                       for r in rows[mine.start:mine.stop]])
            out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
            out["sample_id"] = torch.arange(first_row + mine.start, first_row + mine.stop)
            if self.pin:  # packed here, after the workers: pinned here too
                out = {k: v.pin_memory() for k, v in out.items()}
            yield out

    def metrics(self) -> dict[str, float]:
        return {"data/bad_samples": 0.0, "data/epoch": self.state["docs"] / self.num_documents}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self.state, **self.identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in self.identity().items():
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r} but this raw-text"
                                 f" dataset has {mine!r}: resuming would not continue the same"
                                 " stream (other data, seed, seq_len or tokenizer)")
        self.state = {k: state[k] for k in ("rows", "docs", "carry", "carry_starts")}


class PackedRowsSource(MemorySource):
    """Rows that are already inputs and targets (+ position_ids / doc_ids), served as is."""

    def to_batch(self, idx: np.ndarray, ids: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.arrays.items()}
        batch["sample_id"] = torch.from_numpy(ids.astype(np.int64))
        return batch


def raw_text_eval_arrays(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The validation documents (canonical order), tokenized and packed once; the last rows are
    padded with the padding id and ignored targets, so no token is left out."""
    tok = load_tokenizer(cfg.tokenizer)
    source = ShardedSource(cfg.val_url, cfg.format, cfg, shuffle=False)
    chunks = DocumentChunks(source, tok, cfg.text_field, 0)
    packer = Packer(cfg.seq_len, tok.eos_id, np.int64)
    for first in range(0, source.num_samples, CHUNK_DOCS):
        packer.feed(chunks.chunk(first)[1][: source.num_samples - first])
    rows = TokenRows(cfg, cfg.seq_len)
    out = [rows.row(r["tokens"], r["doc_starts"]) for r in packer.take(packer.ready)]
    tail = packer.state_dict()
    if tail["carry"]:
        seq = np.full(cfg.seq_len + 1, tok.pad_id, np.int64)
        seq[:len(tail["carry"])] = tail["carry"]
        row = rows.row(seq, np.asarray(tail["carry_starts"] or [0]))
        row["targets"][len(tail["carry"]) - 1:] = IGNORE_INDEX
        out.append(row)
    return rows.collate(out)
