"""Real ranks: 2 processes in a gloo process group, each with 2 DataLoader workers, gather the
sample ids of one epoch; then a state saved by those ranks resumes on a single rank."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data_pipeline import DataConfig, build_loader
from data_pipeline.sources import synthetic_images
from data_pipeline.writers import write_splits

N, BATCH, STEPS_BEFORE = 96, 16, 2


def _rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        cfg = DataConfig(format="wds", train_url=f"{root}/train", global_batch_size=BATCH,
                         num_workers=2, shuffle_window=2)
        loader = build_loader(cfg, rank, world, grad_accum=2)
        it = iter(loader)
        mine = []
        for step in range(N // BATCH):
            for _ in range(2):  # grad_accum micro-batches per step
                mine.append(next(it)["sample_id"])
            if step == STEPS_BEFORE - 1:
                state = loader.state_dict()
        ids = torch.cat(mine)
        gathered = [torch.empty_like(ids) for _ in range(world)]
        dist.all_gather(gathered, ids)
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"ids": [g.tolist() for g in gathered], "state": state}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_real_ranks_cover_the_epoch_and_resume_on_one(tmp_path):
    samples, meta = synthetic_images(N, size=4, channels=3, seed=9)
    write_splits(samples, str(tmp_path), "wds", samples_per_shard=16, meta=meta)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "result.json")
    mp.start_processes(_rank, args=(2, port, str(tmp_path), out), nprocs=2, start_method="spawn")
    with open(out) as f:
        result = json.load(f)
    everything = sorted(i for rank_ids in result["ids"] for i in rank_ids)
    assert everything == list(range(N))
    # the state from step STEPS_BEFORE continues on 1 rank with the rest of the epoch
    cfg = DataConfig(format="wds", train_url=f"{tmp_path}/train", global_batch_size=BATCH,
                     num_workers=2, shuffle_window=2)
    single = build_loader(cfg, 0, 1)
    single.load_state_dict(result["state"])
    it = iter(single)
    rest = torch.cat([next(it)["sample_id"] for _ in range(N // BATCH - STEPS_BEFORE)]).tolist()
    per_step = BATCH // 2 // 2  # each rank's micro-batch
    before = [i for r in range(2) for i in result["ids"][r][: STEPS_BEFORE * 2 * per_step]]
    assert sorted(before + rest) == list(range(N))
