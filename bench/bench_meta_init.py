"""Peak host memory per rank while building an engine (FSDP2, DeepSpeed ZeRO-3): eager build vs
meta-device build.

    python bench/bench_meta_init.py                      # both backends, 2 ranks (CPU, gloo)
    python bench/bench_meta_init.py --backend zero3 --width 512 --depth 8

Each rank reports the rise of its peak RSS (VmHWM, `pretrain.metrics.peak_rss_bytes`, reset to
the current RSS just before the build) over its RSS before the build, for an LM of ~200M fp32
parameters (~800 MB) by default, at two points: `initialised` (every initial value in place:
eager, once `build_model` returns; meta, once the engine has materialised it) and `engine built`
(with the optimizer and, for DeepSpeed, its flat partitions and buffers). Eager: every rank
holds the whole model before it is sharded. Meta (the trainer's path): FSDP2 allocates only its
shards; ZeRO-3 allocates one module at a time and partitions it at once. Both draw one full
parameter at a time (torch's trunc_normal_ rejection loop holds a few temporaries of its size).
Each build runs in its own torchrun launch so peaks don't mix.
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

BACKENDS = ("fsdp2", "zero3")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Lower the high-water mark (VmHWM) to the current RSS (Linux >= 4.0), so a peak reached
    before the measured build (imports, the warm-up build, since freed) is not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    from pretrain.metrics import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def parallel_config(backend: str):
    from pretrain.parallel_config import DeepSpeedConfig, ParallelConfig

    if backend == "zero3":
        return ParallelConfig(backend="deepspeed", deepspeed=DeepSpeedConfig(zero_stage=3))
    return ParallelConfig(backend="fsdp2")


def local_numel(engine, backend: str) -> int:
    """Elements of the parameters this rank holds (its shards / ZeRO-3 partitions)."""
    if backend == "zero3":
        return sum(p.ds_tensor.numel() for p in engine.model.module.parameters())
    return sum(p.to_local().numel() for p in engine.model.parameters())


def record_peak_after(cls: type, method: str, peaks: list[float]) -> None:
    """Append the peak RSS to `peaks` each time `cls.method` returns (the values are in place)."""
    original = getattr(cls, method)

    def recorded(self, *args) -> None:
        original(self, *args)
        peaks.append(peak_rss_mb())

    setattr(cls, method, recorded)


def worker(backend: str, meta: bool, width: int, depth: int) -> None:
    from pretrain.dist import init_distributed, shutdown
    from pretrain.engines import build_engine
    from pretrain.models import build_model, count_params, get_family
    from pretrain.models.config import ModelConfig
    from pretrain.optim_config import OptimConfig

    env = init_distributed("cpu", need_group=True)
    init_peaks: list[float] = []  # when every initial value is in place (eager: once built)
    if meta and backend == "zero3":
        from pretrain.engines.deepspeed import DeepSpeedEngine

        record_peak_after(DeepSpeedEngine, "materialize_zero3", init_peaks)
    elif meta:
        from pretrain.engines.base import Engine

        record_peak_after(Engine, "materialize", init_peaks)

    def engine_for(cfg: ModelConfig):
        model = build_model(cfg, seed=0, meta=meta)
        if not meta:
            init_peaks.append(peak_rss_mb())
        return count_params(model), build_engine(
            model, get_family("lm").loss, env, parallel=parallel_config(backend),
            optim=OptimConfig(), model_cfg=cfg, global_batch_size=2)

    engine_for(ModelConfig(family="lm", width=64, depth=1, num_heads=16))  # imports, caches
    init_peaks.clear()
    before = rss_mb()
    reset_peak_rss()
    cfg = ModelConfig(family="lm", width=width, depth=depth, num_heads=16)
    params, engine = engine_for(cfg)
    biggest = max(p.numel() for p in build_model(cfg, seed=0, meta=True).parameters())
    result = {"rank": env.rank, "backend": backend, "meta": meta, "params": params,
              "model_mb": params * 4 / 2**20, "largest_param_mb": biggest * 4 / 2**20,
              "local_shard_mb": local_numel(engine, backend) * 4 / 2**20,
              "init_peak_rise_mb": init_peaks[0] - before,
              "peak_rise_mb": peak_rss_mb() - before}
    sys.stdout.flush()
    os.write(1, f"RESULT {json.dumps(result)}\n".encode())  # one write: ranks share stdout
    shutdown()


def measure(backend: str, mode: str, width: int, depth: int, nproc: int) -> list[dict]:
    """One torchrun launch of `worker`: each rank's result."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           __file__, "--worker", mode, "--backend", backend, "--width", str(width),
           "--depth", str(depth)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]


def describe(mode: str, r: dict) -> str:
    model, init, peak = r["model_mb"], r["init_peak_rise_mb"], r["peak_rise_mb"]
    return (f"{r['backend']:5s} {mode:5s} rank {r['rank']}: model {model:.0f} MB "
            f"({r['params'] / 1e6:.0f}M params, largest {r['largest_param_mb']:.0f} MB), "
            f"local shard {r['local_shard_mb']:.0f} MB, peak RSS rise: initialised "
            f"{init:.0f} MB ({init / model:.2f} of the model), engine built {peak:.0f} MB "
            f"({peak / model:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["meta", "eager"])
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--modes", default="eager,meta", help="comma-separated builds to run")
    parser.add_argument("--json", action="store_true", help="one JSON object per rank and build")
    args = parser.parse_args()
    if args.worker:
        worker(args.backend, args.worker == "meta", args.width, args.depth)
        return
    for backend in BACKENDS if args.backend == "all" else (args.backend,):
        for mode in args.modes.split(","):
            for r in measure(backend, mode, args.width, args.depth, args.nproc):
                print(json.dumps(r) if args.json else describe(mode, r), flush=True)


if __name__ == "__main__":
    main()
