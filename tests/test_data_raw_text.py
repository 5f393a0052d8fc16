"""Raw-text shards written by other tools (MDS `text: str` by streaming.MDSWriter, WDS `.txt`
members by webdataset) tokenized on the fly: the packed stream keeps every token, does not
depend on workers or world size, resumes exactly (loader state and a SIGKILLed training run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_pipeline import DataConfig, build_loader
from data_pipeline.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from tests.test_data_tokenizer import help_topics, write_raw_text_sets

SEQ, MICRO = 32, 8


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    docs = help_topics()
    save_tokenizer(train_bpe(docs, 600), str(root / "tok"))
    sets = write_raw_text_sets(root, docs)
    # a validation set: the last documents, as MDS
    from data_pipeline._compat import import_streaming

    with import_streaming().MDSWriter(out=str(root / "val"), columns={"text": "str"}) as out:
        for d in docs[-5:]:
            out.write({"text": d})
    return sets, str(root / "tok" / "tokenizer.json"), str(root / "val"), docs


def cfg_for(raw, kind: str, **kw) -> DataConfig:
    sets, tok, _, _ = raw
    fmt = "mds" if kind == "mds" else "wds"
    return DataConfig(format=fmt, train_url=sets[kind], tokenizer=tok, seq_len=SEQ,
                      global_batch_size=MICRO, **kw)


def steps(loader, n: int) -> list[dict[str, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("kind", ["mds", "txt"])
def test_stream_is_the_documents_packed_in_order(raw, kind):
    _, tok_path, _, docs = raw
    tok = load_tokenizer(tok_path)
    batches = steps(build_loader(cfg_for(raw, kind, shuffle=False), 0, 1), 12)
    rows = np.concatenate([torch.cat([b["tokens"], b["targets"][:, -1:]], 1).numpy()
                           for b in batches])
    expected = np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in docs])
    assert np.array_equal(rows.reshape(-1), expected[: rows.size])
    ids = torch.cat([b["sample_id"] for b in batches]).tolist()
    assert ids == list(range(12 * MICRO))


@pytest.mark.parametrize("kind", ["mds", "txt"])
def test_resume_on_other_world_sizes_neither_repeats_nor_skips(raw, kind):
    """One process with 2 tokenizing workers, uninterrupted, vs: 3 steps on 1 rank, 3 on 2 ranks,
    3 on 4 ranks (each resuming from the JSON state of the one before), no workers."""
    ref = steps(build_loader(cfg_for(raw, kind, num_workers=2), 0, 1), 9)
    state = None
    got: list[torch.Tensor] = []
    got_ids: list[torch.Tensor] = []
    for world in (1, 2, 4):
        loaders = [build_loader(cfg_for(raw, kind), r, world) for r in range(world)]
        parts = []
        for loader in loaders:
            if state is not None:
                loader.load_state_dict(json.loads(json.dumps(state)))
            parts.append(steps(loader, 3))
        states = [loader.state_dict() for loader in loaders]
        assert all(s == states[0] for s in states)  # every rank holds the same position
        state = states[0]
        for k in range(3):
            got.append(torch.cat([p[k]["tokens"] for p in parts]))
            got_ids.append(torch.cat([p[k]["sample_id"] for p in parts]))
    for k, batch in enumerate(ref):
        assert torch.equal(got[k], batch["tokens"]), k
        assert torch.equal(got_ids[k], batch["sample_id"]), k
    assert torch.cat(got_ids).tolist() == list(range(9 * MICRO))
    with pytest.raises(ValueError, match="tokenizer_sha256"):
        build_loader(cfg_for(raw, kind), 0, 1).load_state_dict({**state, "tokenizer_sha256": "x"})


def test_validation_packs_every_token_once(raw):
    _, tok_path, val, docs = raw
    tok = load_tokenizer(tok_path)
    cfg = cfg_for(raw, "mds", val_url=val, eval_batch_size=4)
    batches = list(build_loader(cfg, 0, 1, "val"))
    targets = torch.cat([b["targets"] for b in batches])
    total = sum(len(tok.encode(d)) + 1 for d in docs[-5:])
    rows = -(-total // (SEQ + 1))  # the last one padded
    assert len(targets) >= rows
    # every id is a target once, except the first of each row (rows of seq_len + 1 ids)
    assert int((targets != -100).sum()) == total - rows

