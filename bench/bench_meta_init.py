"""Peak host memory per rank while building an FSDP2 engine: eager build vs meta-device build.

    python bench/bench_meta_init.py            # launches 2 ranks under torchrun (CPU, gloo)

Each rank reports the rise of its peak RSS (ru_maxrss) over its RSS before the build, for an LM
of ~200M fp32 parameters (~800 MB). Eager: every rank holds the whole model before sharding.
Meta (the trainer's path): each rank allocates only its shards, plus one full parameter at a
time while drawing it. The two builds run in separate torchrun launches so peaks don't mix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    from pretrain.metrics import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def worker(meta: bool, width: int, depth: int) -> None:
    from pretrain.dist import init_distributed, shutdown
    from pretrain.engines import build_engine
    from pretrain.models import build_model, count_params, get_family
    from pretrain.models.config import ModelConfig
    from pretrain.optim_config import OptimConfig
    from pretrain.parallel_config import ParallelConfig

    env = init_distributed("cpu", need_group=True)
    def engine_for(cfg: ModelConfig):
        model = build_model(cfg, seed=0, meta=meta)
        return count_params(model), build_engine(
            model, get_family("lm").loss, env, parallel=ParallelConfig(backend="fsdp2"),
            optim=OptimConfig(), model_cfg=cfg, global_batch_size=2)

    engine_for(ModelConfig(family="lm", width=64, depth=1, num_heads=16))  # imports, caches
    before = rss_mb()
    params, engine = engine_for(ModelConfig(family="lm", width=width, depth=depth, num_heads=16))
    local = sum(p.to_local().numel() for p in engine.model.parameters()) * 4 / 2**20
    result = {"rank": env.rank, "meta": meta, "params": params, "model_mb": params * 4 / 2**20,
              "local_shard_mb": local, "peak_rise_mb": peak_rss_mb() - before}
    print("RESULT " + json.dumps(result), flush=True)
    shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["meta", "eager"])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker == "meta", args.width, args.depth)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for mode in ("eager", "meta"):
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
               __file__, "--worker", mode, "--width", str(args.width), "--depth", str(args.depth)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("RESULT "):
                r = json.loads(line[7:])
                print(f"{mode:5s} rank {r['rank']}: model {r['model_mb']:.0f} MB "
                      f"({r['params'] / 1e6:.0f}M params), "
                      f"local shard {r['local_shard_mb']:.0f} MB, "
                      f"peak RSS rise {r['peak_rise_mb']:.0f} MB "
                      f"({r['peak_rise_mb'] / r['model_mb']:.2f} of the model)")


if __name__ == "__main__":
    main()
