"""Subword text: a BPE trained on Python's own help text, packed shards with the tokenizer in
the manifest, the LM's vocabulary taken from it, bits per byte, and generation with it."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import DataConfig, build_loader
from data_pipeline.order import held_out
from data_pipeline.packing import Packer, token_dtype
from data_pipeline.text import EOS_ID, pack_documents
from data_pipeline.text_build import build_tokenized_text
from data_pipeline.text_memory import load_documents
from data_pipeline.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from tests.conftest import REPO, subprocess_env, train_cmd

VOCAB = 1000


def help_topics() -> list[str]:
    """Python's help topics (the standard library's pydoc_data: real prose, no download)."""
    return [text.decode("utf-8") for _, text in load_documents()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(jsonl path, tokenizer dir, documents): a BPE trained on the help topics."""
    root = tmp_path_factory.mktemp("bpe")
    docs = help_topics()
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    save_tokenizer(train_bpe(docs, VOCAB), str(root / "tok"))
    return src, root / "tok", docs


def test_bpe_round_trips_every_document_exactly(corpus):
    _, tok_dir, docs = corpus
    tok = load_tokenizer(str(tok_dir))
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (VOCAB, 0, 1)
    ids = tok.encode_batch(docs)
    assert all(tok.decode(i) == d for i, d in zip(ids, docs))
    # it is a real subword vocabulary: far fewer tokens than bytes
    assert sum(map(len, ids)) < 0.5 * sum(len(d.encode()) for d in docs)
    odd = "naïve → ü\x00\t\r\n  <|endoftext|> 日本語 \U0001f600"
    clone = pickle.loads(pickle.dumps(tok))  # worker processes get it pickled
    assert clone.decode(clone.encode(odd)) == odd


def test_foreign_tokenizer_needs_a_named_end_of_document(corpus, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.add_special_tokens(["</s>"])
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str())
    assert load_tokenizer(str(path)).eos_id == 0  # found by its common name
    tok2 = Tokenizer(models.BPE())
    path.write_text(tok2.to_str())
    with pytest.raises(ValueError, match="no end-of-document token.*--eos-token"):
        load_tokenizer(str(path))


def test_packer_matches_byte_packing_and_carries_over():
    docs = [d[: 50 + 37 * i] for i, d in enumerate(help_topics()[:30])]
    expected = list(pack_documents(docs, 64))
    ids = [np.frombuffer(d.encode(), np.uint8).astype(np.int32) for d in docs]
    whole = list(Packer(64, EOS_ID).add(ids))
    first = Packer(64, EOS_ID)
    rows = list(first.add(ids[:11]))
    second = Packer(64, EOS_ID)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through a checkpoint
    rows += list(second.add(ids[11:]))
    for got in (whole, rows):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert np.array_equal(a["tokens"], b["tokens"])
            assert np.array_equal(a["doc_starts"], b["doc_starts"])
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_build_is_independent_of_workers_and_keeps_every_token(corpus, tmp_path, fmt):
    src, tok_dir, docs = corpus
    tok = load_tokenizer(str(tok_dir))
    one = build_tokenized_text([str(src)], str(tmp_path / "one"), fmt, tok, 64, workers=1,
                               shard_samples=300)
    two = build_tokenized_text([str(src)], str(tmp_path / "two"), fmt, tok, 64, workers=2,
                               shard_samples=300)
    for split in ("train", "val"):
        assert [s.sha256 for s in one[split].shards] == [s.sha256 for s in two[split].shards]
    meta = one["train"].meta
    assert (meta["vocab_size"], meta["eos_id"], meta["pad_id"]) == (VOCAB, 0, 1)
    assert meta["dtype"] == "uint16" and meta["tokenizer_sha256"] == tok.sha256
    assert (tmp_path / "one" / "tokenizer.json").read_text() == tok.json_text
    # the rows, read back in order, are the training documents' ids, each followed by
    # end-of-document, up to the last full row
    cfg = DataConfig(format=fmt, train_url=str(tmp_path / "one" / "train"), shuffle=False,
                     global_batch_size=one["train"].num_samples)
    batch = next(iter(build_loader(cfg, 0, 1, "train")))
    stream = np.concatenate([batch["tokens"].numpy(), batch["targets"][:, -1:].numpy()], 1)
    is_val = held_out(len(docs), 0.2)
    train_docs = [d for d, v in zip(docs, is_val) if not v]
    expected = np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in train_docs])
    assert np.array_equal(stream.reshape(-1), expected[: stream.size])
    assert expected.size - stream.size < 65  # only the last partial row is dropped


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path):
    pytest.importorskip("tokenizers")
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed")
    except ImportError:
        pass
    from data_pipeline.tokenizer import read_documents

    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="needs pyarrow"):
        list(read_documents([str(tmp_path / "x.parquet")]))


def test_model_vocab_comes_from_the_manifest_and_a_smaller_one_is_refused(corpus, tmp_path):
    from pretrain.config import load_config
    from pretrain.lm_vocab import VocabMismatchError, bits_per_byte, resolve_vocab

    src, tok_dir, _ = corpus
    build_tokenized_text([str(src)], str(tmp_path / "ds"), "wds", load_tokenizer(str(tok_dir)),
                         32)
    data = [f"data.train_url={tmp_path / 'ds' / 'train'}", f"data.val_url={tmp_path}/ds/val"]
    cfg = load_config(REPO / "configs/lm_gpt2_small.yaml", ["data.format=wds", *data])
    meta = resolve_vocab(cfg.model, cfg.data)
    assert cfg.model.lm.vocab_size == VOCAB and meta["eos_id"] == 0
    bpb = bits_per_byte({"loss": 2.0}, meta)["bits_per_byte"]
    assert math.isclose(bpb, 2.0 / math.log(2) / meta["bytes_per_token"])
    cfg = load_config(REPO / "configs/lm_gpt2_small.yaml",
                      ["data.format=wds", *data, "model.lm.vocab_size=256"])
    with pytest.raises(VocabMismatchError) as err:
        resolve_vocab(cfg.model, cfg.data)
    message = str(err.value)
    assert "\n" not in message and "model.lm.vocab_size=256" in message
    assert f"vocab_size={VOCAB}" in message and "eos_id=0" in message


def test_gpt2_recipe_trains_evaluates_bits_per_byte_and_generates(corpus, tmp_path):
    """The raw text -> tokenizer -> shards -> train -> generate path of the README, with the
    GPT-2-small recipe at a tiny width (the full model is the same code at 768 x 12)."""
    from pretrain.cli.generate import generate_text

    src, tok_dir, _ = corpus
    out = tmp_path / "text"
    build = subprocess.run(
        [sys.executable, "-m", "pretrain", "data", "build", "text",
         "--src", str(src), "--tokenizer", str(tok_dir), "--seq-len", "32", "--format", "mds",
         "--out", str(out), "--workers", "2"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    run_dir = tmp_path / "run"
    overrides = ["model.width=32", "model.depth=2", "model.num_heads=2", "model.lm.seq_len=32",
                 "data.seq_len=32", f"data.train_url={out}/train", f"data.val_url={out}/val",
                 "data.global_batch_size=8", "data.eval_batch_size=8", "data.num_workers=0",
                 "optim.grad_accum=1", "schedule.steps=2", "schedule.warmup_steps=1",
                 "logging.eval_every_steps=2", "logging.eval_batches=2",
                 "logging.progress_bar=false", "logging.tensorboard=false",
                 "parallel.backend=single", f"run.dir={run_dir}"]
    proc = subprocess.run(train_cmd(0, overrides, "configs/lm_gpt2_small.yaml"), cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"][-1]
    assert 0 < val["bits_per_byte"] < val["loss"] / math.log(2)  # > 1 byte per token
    text = generate_text(run_dir, "The for statement", 8)  # tokenizer found next to the data
    assert isinstance(text, str)
    with pytest.raises(ValueError, match="is not the one of the run's data"):
        other = tmp_path / "other"
        save_tokenizer(train_bpe(help_topics()[:20], 400), str(other))
        generate_text(run_dir, "The", 4, tokenizer=str(other))


def write_raw_text_sets(root, docs: list[str]) -> dict[str, str]:
    """The same documents as other tools write them: an MDS `text: str` column
    (streaming.MDSWriter, the llm-foundry convention), WebDataset `.txt` and `.json` members
    (webdataset.TarWriter / ShardWriter)."""
    import webdataset as wds

    from data_pipeline._compat import import_streaming

    streaming = import_streaming()
    with streaming.MDSWriter(out=str(root / "mds"), columns={"text": "str"},
                             size_limit=200_000) as out:
        for d in docs:
            out.write({"text": d})
    for kind in ("txt", "json"):
        (root / kind).mkdir()
        with wds.ShardWriter(str(root / kind / "part-%04d.tar"), maxcount=25, verbose=0) as sink:
            for i, d in enumerate(docs):
                sink.write({"__key__": f"d{i:05d}", kind: d if kind == "txt" else {"text": d}})
    return {k: str(root / k) for k in ("mds", "txt", "json")}


def test_raw_text_shards_of_other_tools_tokenize_and_train_refuses_them(corpus, tmp_path):
    _, tok_dir, docs = corpus
    tok = load_tokenizer(str(tok_dir))
    sets = write_raw_text_sets(tmp_path, docs)
    from data_pipeline.tokenizer import read_documents

    for kind, url in sets.items():
        assert list(read_documents([url])) == docs, kind
    glob = f"{sets['txt']}/part-{{0000..0003}}.tar"  # a shard pattern works as --src too
    assert list(read_documents([glob])) == docs
    built = build_tokenized_text([sets["mds"]], str(tmp_path / "ds"), "wds", tok, 64)
    assert built["train"].meta["documents"] + built["val"].meta["documents"] == len(docs)
    # training on the raw set directly is refused with the command that fixes it
    cfg = DataConfig(format="wds", train_url=sets["txt"], global_batch_size=4)
    with pytest.raises(ValueError, match="raw text.*pretrain data build text"):
        build_loader(cfg, 0, 1)
