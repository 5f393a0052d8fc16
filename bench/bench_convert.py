"""Checkpoint conversion throughput and peak memory against a plain copy of the same bytes.

    OMP_NUM_THREADS=1 python bench/bench_convert.py --workdir /tmp/bench_convert [--tensors 80]

Makes a ~2 GB checkpoint (fp32 weights + Adam moments, `--tensors` x 8 MiB each kind) as DCP,
and a real DeepSpeed ZeRO-2 checkpoint of an 85M-parameter ViT written by `pretrain train` on
2 ranks; then times each conversion in a fresh process that reports its own peak RSS, next to
`cp`-style copying of the source directory (read + write + fsync of the same files). Results
go to stdout as a Markdown table (and --json). Sources sit in the page cache for every row alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, shutil, sys, time
from pathlib import Path
import torch
op, src, dst = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
t0 = time.perf_counter()
if op == "make_dcp":
    from pretrain.checkpoint.convert.sinks import write_dcp
    from pretrain.checkpoint.convert.synthetic import SyntheticSource
    write_dcp(SyntheticSource(int(sys.argv[4]), (2048, 1024)), dst, sync=False)
elif op == "copy":
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(f, "rb") as a, open(out, "wb") as b:
            shutil.copyfileobj(a, b, 8 << 20)
            b.flush(); os.fsync(b.fileno())
elif op in ("to_deepspeed", "to_dcp"):
    from pretrain.checkpoint.convert.sources import open_source
    from pretrain.checkpoint.convert.sinks import write_dcp, write_universal
    source = open_source(src)
    if op == "to_deepspeed":
        write_universal(source, dst, global_steps=1)
    else:
        write_dcp(source, dst)
elif op.startswith("safetensors_"):
    from pretrain.checkpoint.convert import export_safetensors
    export_safetensors(src, dst, dtype=torch.bfloat16 if op.endswith("bf16") else torch.float32)
seconds = time.perf_counter() - t0
from pretrain.metrics import peak_rss_bytes
peak_rss = peak_rss_bytes()
print(json.dumps({"seconds": seconds, "peak_rss": peak_rss}))
"""


def env() -> dict[str, str]:
    e = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    e.pop("WORLD_SIZE", None)
    return e


def worker(op: str, src: Path, dst: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, op, str(src), str(dst), *extra],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{op} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dir_bytes(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def make_deepspeed(workdir: Path) -> Path:
    """A real ZeRO-2 checkpoint from the trainer: 2 ranks, one step of an 85M-parameter ViT."""
    run = workdir / "ds_run"
    if not (run / "checkpoints/step_00000001").exists():
        overrides = [
            "model.width=768",
            "model.depth=12",
            "model.num_heads=12",
            "data.format=memory",
            "data.name=synthetic_images",
            "data.global_batch_size=2",
            "schedule.steps=1",
            "schedule.warmup_steps=0",
            "checkpoint.every_steps=1",
            "logging.eval_every_steps=0",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "parallel.backend=deepspeed",
            "parallel.deepspeed.zero_stage=2",
            f"run.dir={run}",
        ]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "pretrain", "train", "configs/vit_digits.yaml", *overrides]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, env=env(), check=True, capture_output=True)
    return run / "checkpoints/step_00000001"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_convert"))
    ap.add_argument(
        "--tensors", type=int, default=80, help="8 MiB fp32 tensors (x3 with Adam moments)"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--skip-deepspeed", action="store_true", help="no DeepSpeed-written source")
    args = ap.parse_args()
    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    for d in (
        "copy",
        "ds",
        "dcp2",
        "from_zero",
        "zero_copy",
        "w.safetensors",
        "w_bf16.safetensors",
    ):
        p = w / d
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    dcp = w / "dcp"
    if not dcp.exists():
        worker("make_dcp", dcp, dcp, str(args.tensors))
    largest = 2048 * 1024 * 4
    rows = []

    def row(name: str, op: str, src: Path, dst: Path, moved: int) -> None:
        r = worker(op, src, dst)
        rows.append(
            {
                "conversion": name,
                "bytes": moved,
                "seconds": r["seconds"],
                "MB_per_s": moved / r["seconds"] / 1e6,
                "peak_rss_MiB": r["peak_rss"] / 2**20,
                "bound_MiB": (3 * largest + 500 * 2**20) / 2**20,
            }
        )
        print(
            f"{name}: {r['seconds']:.1f} s, {moved / r['seconds'] / 1e6:.0f} MB/s, "
            f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB",
            file=sys.stderr,
        )

    total = dir_bytes(dcp)
    row("plain copy of the DCP files (baseline)", "copy", dcp, w / "copy", total)
    row("DCP -> DeepSpeed (universal)", "to_deepspeed", dcp, w / "ds", total)
    row("DeepSpeed (universal) -> DCP", "to_dcp", w / "ds", w / "dcp2", dir_bytes(w / "ds"))
    row("DCP -> safetensors fp32", "safetensors_fp32", dcp, w / "w.safetensors", total // 3)
    row("DCP -> safetensors bf16", "safetensors_bf16", dcp, w / "w_bf16.safetensors", total // 3)
    if not args.skip_deepspeed:
        zero = make_deepspeed(w)
        zbytes = dir_bytes(zero / "model")
        row(
            "plain copy of the ZeRO-2 files (baseline)",
            "copy",
            zero / "model",
            w / "zero_copy",
            zbytes,
        )
        row("DeepSpeed ZeRO-2 (2 ranks, native) -> DCP", "to_dcp", zero, w / "from_zero", zbytes)
        sys.path.insert(0, str(REPO))
        from pretrain.checkpoint.convert.sources import open_source

        zlargest = max(i.numel * 4 for i in open_source(zero).params.values())
        rows[-1]["bound_MiB"] = rows[-2]["bound_MiB"] = (3 * zlargest + 500 * 2**20) / 2**20

    print("| conversion | data | time | throughput | peak RSS | bound (3 x largest + 500 MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['conversion']} | {r['bytes'] / 1e9:.2f} GB | {r['seconds']:.1f} s "
            f"| {r['MB_per_s']:.0f} MB/s | {r['peak_rss_MiB']:.0f} MiB | {r['bound_MiB']:.0f} MiB |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
