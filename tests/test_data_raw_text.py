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



def raw_train_args(raw, kind: str, run_dir, workers: int, *extra: str) -> list[str]:
    """A tiny LM on the raw-text set, tokenized on the fly; dropout on, so a shifted RNG (one
    more draw after resuming) would show in the weights."""
    sets, tok, _, _ = raw
    return ["model.width=32", "model.depth=2", "model.num_heads=2", "model.lm.seq_len=32",
            "model.dropout=0.1", f"data.format={'mds' if kind == 'mds' else 'wds'}",
            f"data.train_url={sets[kind]}", f"data.tokenizer={tok}", "data.seq_len=32",
            "data.global_batch_size=8", f"data.num_workers={workers}", "data.val_url=",
            "optim.grad_accum=2", "schedule.steps=24", "schedule.warmup_steps=2",
            "checkpoint.every_steps=3", "checkpoint.keep_last=2", "logging.every_steps=1",
            "logging.eval_every_steps=0", "logging.progress_bar=false",
            "logging.tensorboard=false", f"run.dir={run_dir}", *extra]


def train_raw(raw, kind: str, run_dir, nproc: int, workers: int, *extra: str):
    import subprocess

    from tests.conftest import REPO, subprocess_env, train_cmd

    args = raw_train_args(raw, kind, run_dir, workers,
                          f"parallel.backend={'fsdp2' if nproc else 'single'}", *extra)
    proc = subprocess.run(train_cmd(nproc, args, "configs/lm_gpt2_small.yaml"), cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mds", "txt"])
def test_training_resumes_bitwise_after_sigkill(raw, kind, tmp_path):
    """A run with a tokenizing worker, SIGKILLed at a random step, resumed from its last
    checkpoint: the final weights equal an uninterrupted run's, bit for bit."""
    import random

    from pretrain.checkpoint import latest_complete, read_model_tensors
    from tests.conftest import kill_run_at_step, train_cmd

    train_raw(raw, kind, tmp_path / "ref", 0, 1)
    victim = tmp_path / "victim"
    seed = random.randrange(1 << 30)
    kill_step = random.Random(seed).randint(4, 20)
    args = raw_train_args(raw, kind, victim, 1, "parallel.backend=single")
    killed_at = kill_run_at_step(train_cmd(0, args, "configs/lm_gpt2_small.yaml"), victim,
                                 kill_step)
    proc = train_raw(raw, kind, victim, 0, 1)
    assert "resumed from" in proc.stderr, f"killed at {killed_at}: did not resume"
    ref = read_model_tensors(latest_complete(tmp_path / "ref" / "checkpoints"))
    got = read_model_tensors(latest_complete(victim / "checkpoints"))
    assert ref.keys() == got.keys()
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"killed at step {killed_at} (seed {seed}): {differ[:5]} differ"


@pytest.mark.slow
def test_training_resumes_on_another_world_size_at_the_same_sequence(raw, tmp_path):
    """2 ranks (a tokenizing worker each) checkpoint at step 6; 1 rank without workers resumes
    there. It reads the same token sequences: the losses follow the 2-rank run's, and after step
    12 both hold the same position (sequence rows, documents, packer carry-over)."""
    import shutil

    from pretrain.checkpoint import read_train_state
    from pretrain.run_dir import read_metrics

    common = ["model.dropout=0.0", "schedule.steps=12", "checkpoint.every_steps=6",
              "checkpoint.keep_last=3"]
    ref = tmp_path / "ref"
    train_raw(raw, "txt", ref, 2, 1, *common)
    resumed = tmp_path / "resumed"
    step6 = "checkpoints/step_00000006"
    shutil.copytree(ref / step6, resumed / step6)
    proc = train_raw(raw, "txt", resumed, 0, 0, *common)
    assert "resumed from" in proc.stderr
    at6 = read_train_state(ref / step6)["loader"]
    assert at6["rows"] == 6 * 8  # sequences handed out by both ranks together
    end = "checkpoints/step_00000012"
    ref_end, got_end = (read_train_state(d / end)["loader"] for d in (ref, resumed))
    assert got_end == ref_end and ref_end["rows"] == 12 * 8

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}

    ref_losses, got = losses(ref), losses(resumed)
    assert sorted(got) == list(range(7, 13))
    for step, loss in got.items():
        assert loss == pytest.approx(ref_losses[step], rel=1e-4), step


def test_raw_text_loader_serves_the_train_contract(raw):
    """The trainer may rely on `contract.TrainLoader` (consumed, stop, metrics) here too: the
    budget ends the stream at whole steps and `consumed` counts the sequences of all ranks."""
    from data_pipeline.contract import TrainLoader

    loaders = [build_loader(cfg_for(raw, "mds", budget_samples=3 * MICRO + 5), r, 2)
               for r in range(2)]
    assert all(isinstance(loader, TrainLoader) for loader in loaders)
    for loader in loaders:
        assert len(list(loader)) == 3 and loader.consumed == 3 * MICRO
        assert 0 < loader.metrics()["data/epoch"] < 1


def test_a_document_without_text_is_one_clear_error_from_a_worker(raw, tmp_path):
    """A sample with no text, met by a tokenizing worker: the error the trainer sees is the
    worker's own (naming shard and sample), not DataLoader's re-wrapped traceback."""
    import webdataset as wds

    _, tok, _, docs = raw
    (tmp_path / "bad").mkdir()
    with wds.TarWriter(str(tmp_path / "bad" / "part-0000.tar")) as sink:
        for i, d in enumerate(docs[:20]):
            sink.write({"__key__": f"d{i:05d}", "txt": d} if i != 7 else
                       {"__key__": f"d{i:05d}", "cls": b"3"})
    cfg = DataConfig(format="wds", train_url=str(tmp_path / "bad"), tokenizer=tok, seq_len=SEQ,
                     global_batch_size=MICRO, num_workers=1, shuffle=False)
    with pytest.raises(ValueError) as err:
        steps(build_loader(cfg, 0, 1), 50)
    assert str(err.value).startswith("part-0000.tar sample 'd00007': no text among the fields")
