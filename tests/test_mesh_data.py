"""The data order on a mesh: 4 real gloo ranks laid out as (dp_shard=2, tp=2) and as
dp_shard=4 read one epoch through the loader the trainer builds (data-parallel rank and size
from the mesh layout). Each sample is read exactly once per epoch, the TP ranks of one group
read identical batches, every step trains on the same global batch on both meshes, and a
loader state saved on the TP mesh continues at dp_shard=4 without repeating or skipping."""

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
from pretrain.mesh import build_layout, resolve_mesh
from pretrain.parallel_config import MeshConfig

N, BATCH, WORLD, STEPS_BEFORE = 96, 16, 4, 2
MESHES = {"tp": MeshConfig(dp_shard=2, tp=2), "dp4": MeshConfig()}


def data_config(root: str) -> DataConfig:
    return DataConfig(format="wds", train_url=f"{root}/train", global_batch_size=BATCH,
                      num_workers=1, shuffle_window=2)


def _rank(rank: int, port: int, root: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        result = {}
        for name, mesh in MESHES.items():
            layout = build_layout(resolve_mesh(mesh, WORLD, "fsdp2"), rank,
                                  torch.device("cpu"), with_mesh=True)
            loader = build_loader(data_config(root), layout.dp_rank, layout.dp_size, "train")
            it = iter(loader)
            steps = []
            for step in range(N // BATCH):
                steps.append(next(it)["sample_id"])
                if step == STEPS_BEFORE - 1:
                    state = loader.state_dict()
            ids = torch.stack(steps)  # [steps, this rank's share of a batch]
            gathered = [torch.empty_like(ids) for _ in range(WORLD)]
            dist.all_gather(gathered, ids)
            result[name] = {"ids": [g.tolist() for g in gathered], "state": state,
                            "dp_ranks": [r // mesh.tp for r in range(WORLD)]}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def global_batches(ids: list, dp_ranks: list[int]) -> list[list[int]]:
    """Per step, the sorted ids of the global batch: one share per data-parallel rank."""
    first = {dp: r for r, dp in reversed(list(enumerate(dp_ranks)))}  # a rank per dp group
    return [sorted(i for r in first.values() for i in ids[r][step])
            for step in range(len(ids[0]))]


@pytest.mark.slow
def test_every_sample_once_across_meshes(tmp_path):
    samples, meta = synthetic_images(N, size=4, channels=3, seed=9)
    write_splits(samples, str(tmp_path), "wds", samples_per_shard=16, meta=meta)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "result.json"
    mp.start_processes(_rank, args=(port, str(tmp_path), str(out)), nprocs=WORLD,
                       start_method="spawn")
    result = json.loads(out.read_text())
    tp, dp4 = result["tp"], result["dp4"]
    assert tp["ids"][0] == tp["ids"][1] and tp["ids"][2] == tp["ids"][3]  # TP ranks: one batch
    assert tp["ids"][0] != tp["ids"][2]
    batches = global_batches(tp["ids"], tp["dp_ranks"])
    assert batches == global_batches(dp4["ids"], dp4["dp_ranks"])  # same global batch per step
    assert sorted(i for batch in batches for i in batch) == list(range(N))  # each exactly once
    # the TP mesh's state after STEPS_BEFORE steps continues on dp_shard=4 (loaders per rank)
    rest = []
    for dp_rank in range(WORLD):
        loader = build_loader(data_config(str(tmp_path)), dp_rank, WORLD, "train")
        loader.load_state_dict(tp["state"])
        it = iter(loader)
        rest.append([next(it)["sample_id"].tolist() for _ in range(N // BATCH - STEPS_BEFORE)])
    assert global_batches(rest, list(range(WORLD))) == batches[STEPS_BEFORE:]
