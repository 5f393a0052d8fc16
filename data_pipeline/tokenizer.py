"""Subword tokenizers for text shards: byte-level BPE trained on the corpus itself, or any
existing HF `tokenizer.json` (e.g. the one of a model a user continues training).

Byte-level BPE maps every string to tokens and back without loss (decode(encode(x)) == x), so
no document is changed by tokenization. Two special tokens matter to the data pipeline:
end-of-document (appended after every document when packing) and padding. Their ids, the
vocabulary size and the tokenizer's sha256 travel in the dataset manifest (`token_meta`), and
the LM recipe takes its vocabulary from there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from data_pipeline.storage import write_text_atomic

TOKENIZER_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# names under which other tokenizers ship their end-of-document / padding tokens
EOS_NAMES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
PAD_NAMES = (PAD_TOKEN, "<pad>", "[PAD]", "<|padding|>")


@dataclass
class TextTokenizer:
    """A loaded tokenizer with the ids the packer needs; picklable for worker processes."""

    path: str
    json_text: str
    eos_id: int
    pad_id: int
    vocab_size: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.json_text.encode()).hexdigest()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_backend"}  # rebuilt per process

    @property
    def backend(self) -> Any:
        """The `tokenizers.Tokenizer` (built once per process)."""
        tok = self.__dict__.get("_backend")
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self.json_text)
            self.__dict__["_backend"] = tok
        return tok

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_meta(self) -> dict[str, Any]:
        """What a dataset manifest records about its tokenizer."""
        return {"tokenizer": "bpe", "tokenizer_sha256": self.sha256,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id, "pad_id": self.pad_id}


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` of `vocab_size` ids (specials included) learnt
    from `texts`; ids 0 and 1 are end-of-document and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 2:
        raise ValueError(f"--vocab-size {vocab_size}: a byte-level BPE needs at least"
                         f" {len(alphabet) + 2} ids (256 bytes + 2 special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def _special_id(vocab: dict[str, int], names: tuple[str, ...], given: str) -> int | None:
    if given:
        return vocab.get(given)
    return next((vocab[n] for n in names if n in vocab), None)


def load_tokenizer(path: str, eos_token: str = "", pad_token: str = "") -> TextTokenizer:
    """A `tokenizer.json` (or a directory holding one), with its end-of-document and padding
    ids found by common names or given; no padding token falls back to end-of-document."""
    from tokenizers import Tokenizer

    file = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
    with open(file, encoding="utf-8") as f:
        text = f.read()
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:
        raise ValueError(f"{file}: not a HF tokenizers tokenizer.json ({e})") from e
    vocab = tok.get_vocab(with_added_tokens=True)
    eos = _special_id(vocab, EOS_NAMES, eos_token)
    if eos is None:
        raise ValueError(f"{file}: no end-of-document token (looked for"
                         f" {eos_token or ', '.join(EOS_NAMES)}); name it with --eos-token")
    pad = _special_id(vocab, PAD_NAMES, pad_token)
    return TextTokenizer(path=os.path.abspath(file), json_text=text, eos_id=eos,
                         pad_id=eos if pad is None else pad,
                         vocab_size=tok.get_vocab_size(with_added_tokens=True))


def save_tokenizer(tok: Any, out_dir: str) -> str:
    """Write `tok` as out_dir/tokenizer.json (atomically); returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, TOKENIZER_FILE)
    write_text_atomic(path, tok.to_str(pretty=True))
    return path


def jsonl_documents(path: str, field: str = "text") -> Iterator[str]:
    """The `field` of every JSON object line of `path` (blank lines skipped); a bad line is an
    error naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a JSON object with a {field!r}"
                                 f" string ({e})") from e


def read_documents(paths: Iterable[str], field: str = "text") -> Iterator[str]:
    """Documents of JSONL files (one JSON object per line, text in `field`), parquet files (a
    `field` column, needs pyarrow), plain text files (one document per file) and raw-text shard
    sets written by other tools (see `shard_documents`)."""
    for path in paths:
        if is_shard_set(path):
            yield from shard_documents(path, field)
        elif path.endswith((".jsonl", ".json")):
            yield from jsonl_documents(path, field)
        elif path.endswith(".parquet"):
            yield from _parquet_documents(path, field)
        else:
            with open(path, encoding="utf-8") as f:
                yield f.read()


def _parquet_documents(path: str, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), which is"
                         " not installed; convert to JSONL or install it") from e
    table = pq.ParquetFile(path)
    if field not in table.schema_arrow.names:
        raise ValueError(f"{path}: no {field!r} column (columns: {table.schema_arrow.names})")
    for batch in table.iter_batches(columns=[field]):
        yield from batch.column(0).to_pylist()


def is_shard_set(path: str) -> bool:
    """A directory or URL of shards (MDS index.json, tar files) or a shard pattern."""
    from data_pipeline.shard_urls import is_shard_spec

    if "://" in path or is_shard_spec(path):
        return True
    return os.path.isdir(path)


def shard_documents(url: str, field: str = "text") -> Iterator[str]:
    """The texts of a raw-text shard set in canonical order: MDS with a `field` str column (the
    llm-foundry convention, streaming.MDSWriter), or WebDataset tars whose samples hold a `.txt`
    member or a `.json` member with a `field` string (webdataset.TarWriter)."""
    from data_pipeline.config import DataConfig
    from data_pipeline.decode import decode_field
    from data_pipeline.manifest import MDS_INDEX_NAME
    from data_pipeline.shard_urls import split_shard_spec
    from data_pipeline.source import ShardedSource
    from data_pipeline.storage import ShardStore

    root, _ = split_shard_spec(url)
    fmt = "mds" if ShardStore(root).read_small(MDS_INDEX_NAME) is not None else "wds"
    source = ShardedSource(url, fmt, DataConfig(format=fmt, verify_checksums="download"),
                           shuffle=False)
    for shard in range(len(source.manifest.shards)):
        for index in range(source.manifest.shards[shard].samples):
            name, key, raw = source.read_at(shard, index)
            yield _text_of(raw, field, f"{url}: {name} sample {key!r}", decode_field)


def _text_of(raw: dict, field: str, where: str, decode: Any) -> str:
    for name in (field, "txt", "text"):
        if name in raw:
            return decode(*raw[name])
    if "json" in raw:
        value = decode(*raw["json"])
        if isinstance(value, dict) and isinstance(value.get(field), str):
            return value[field]
    raise ValueError(f"{where}: no text among the fields {sorted(raw)} (a {field!r} column, a"
                     f" .txt member, or a .json member with a {field!r} string)")
