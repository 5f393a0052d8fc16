"""Subword text at speed: `data build text --tokenizer --workers K` against a plain loop of
`tokenizers.Tokenizer.encode_batch` over the same corpus with the same K worker processes, and
raw-text shards tokenized on the fly by the loader against reading the pre-tokenized shards.

    PYTHONPATH=. python bench/bench_tokenize.py --repeat 20 --workers 2 --rounds 3

The corpus is Python's own help text (pydoc_data, no download) repeated `--repeat` times, as
JSONL; the BPE is trained on it. Build: documents/s and tokens/s of the whole build (reading,
train/val split, tokenizing in K spawned processes, packing, shard writing, manifest and build
journal) vs the plain loop (reading the same JSONL, a spawned Pool of K processes running
encode_batch on the same chunks, counting tokens). Each round runs both, in alternating order,
into fresh output directories; the best round of each is kept (the machine is shared). Loading:
rows/s of packed sequences through `build_loader` with `--workers` DataLoader workers, raw-text
MDS (`text: str`, written by streaming.MDSWriter) vs the pre-tokenized MDS shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import get_context

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline import DataConfig, build_loader  # noqa: E402
from data_pipeline._compat import import_streaming  # noqa: E402
from data_pipeline.text_build import CHUNK_DOCS, build_tokenized_text  # noqa: E402
from data_pipeline.text_memory import load_documents  # noqa: E402
from data_pipeline.tokenizer import (  # noqa: E402
    TextTokenizer,
    load_tokenizer,
    read_documents,
    save_tokenizer,
    train_bpe,
)

_tok: TextTokenizer | None = None


def _init(tok: TextTokenizer) -> None:
    global _tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _tok = tok


def _count(texts: list[str]) -> int:
    return sum(len(e.ids) for e in _tok.backend.encode_batch(texts, add_special_tokens=False))


def plain_loop(src: str, tok: TextTokenizer, workers: int) -> int:
    """Tokens of the corpus by the plain loop: read, chunk, encode_batch in K processes."""
    docs = list(read_documents([src]))
    chunks = [docs[i:i + CHUNK_DOCS] for i in range(0, len(docs), CHUNK_DOCS)]
    if workers <= 1:
        _init(tok)
        return sum(map(_count, chunks))
    with get_context("spawn").Pool(workers, _init, (tok,)) as pool:
        return sum(pool.imap(_count, chunks, chunksize=1))


def our_build(src: str, tok: TextTokenizer, workers: int, out: str, seq_len: int) -> int:
    manifests = build_tokenized_text([src], out, "mds", tok, seq_len, workers=workers)
    return sum(m.meta["text_tokens"] - m.meta["documents"] for m in manifests.values())


def rows_per_s(cfg: DataConfig, warmup: int, batches: int) -> float:
    it = iter(build_loader(cfg, 0, 1, "train"))
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * cfg.global_batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=20, help="copies of the help text in the corpus")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import_streaming()  # once, before timing (it pulls in transformers: seconds)
    root = tempfile.mkdtemp(prefix="bench-tokenize-")
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: str) -> None:
    docs = [text.decode("utf-8") for _ in range(args.repeat) for _, text in load_documents()]
    src = os.path.join(root, "corpus.jsonl")
    with open(src, "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    save_tokenizer(train_bpe(docs, args.vocab), os.path.join(root, "tok"))
    tok = load_tokenizer(os.path.join(root, "tok"))
    size_mb = sum(len(d.encode()) for d in docs) / 2**20
    k = args.workers
    best = {"plain encode_batch loop": 0.0, "data build text": 0.0}
    tokens = {}
    for r in range(args.rounds):
        order = list(best) if r % 2 == 0 else list(best)[::-1]
        for name in order:
            out = os.path.join(root, f"build-{r}")
            start = time.perf_counter()
            if name == "data build text":
                n = our_build(src, tok, k, out, args.seq_len)
            else:
                n = plain_loop(src, tok, k)
            rate = n / (time.perf_counter() - start)
            shutil.rmtree(out, ignore_errors=True)
            tokens[name] = n
            best[name] = max(best[name], rate)
    assert tokens["data build text"] == tokens["plain encode_batch loop"], tokens
    plain = best["plain encode_batch loop"]
    print(f"# tokenize benchmark: {os.cpu_count()} cores, K={k} processes, corpus"
          f" {len(docs)} documents / {size_mb:.1f} MB / {tokens['plain encode_batch loop']:,}"
          f" tokens, BPE vocab {tok.vocab_size}, best of {args.rounds} rounds\n")
    print("| build | tokens/s | vs plain loop |\n|---|---:|---:|")
    for name, rate in best.items():
        print(f"| {name} | {rate:,.0f} | {rate / plain:.2f} |")

    raw = os.path.join(root, "raw")
    with import_streaming().MDSWriter(out=raw, columns={"text": "str"},
                                      size_limit=1 << 22) as w:
        for d in docs:
            w.write({"text": d})
    built = os.path.join(root, "built")
    build_tokenized_text([src], built, "mds", tok, args.seq_len, workers=k, val_fraction=0.0)
    common = {"format": "mds", "seq_len": args.seq_len, "global_batch_size": args.batch,
              "num_workers": k}
    cases = {"pre-tokenized shards": DataConfig(train_url=f"{built}/train", **common),
             "raw text, tokenized on the fly": DataConfig(train_url=raw,
                                                          tokenizer=f"{root}/tok", **common)}
    load = dict.fromkeys(cases, 0.0)
    for r in range(args.rounds):
        for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
            load[name] = max(load[name], rows_per_s(cases[name], args.warmup, args.batches))
    ref = load["pre-tokenized shards"]
    print(f"\n| loading ({k} workers, batch {args.batch} x {args.seq_len}) | rows/s |"
          " vs pre-tokenized |\n|---|---:|---:|")
    for name, rate in load.items():
        print(f"| {name} | {rate:,.0f} | {rate / ref:.2f} |")


if __name__ == "__main__":
    main()
