"""The GPU check: the project's engine against a plain PyTorch loop, on synthetic data.

    bash bench/gpu_check.sh            # one H200: ViT-B/16, DiT-XL/2, ~1B LM, checkpoint, trainer
    bash bench/gpu_check.sh --tiny     # the same code at toy sizes on a CPU (the tests run it)

Per model: steps/s, tokens/s, MFU (against the device's bf16 peak), peak memory, and the ratio of
the project's steps/s to a plain loop's over the same model with the same bf16 / compile /
fused-AdamW settings (goal: >= 0.95). Then the checkpoint save rate of the LM's GPU state
(model + AdamW), and the real trainer (`pretrain train` under torchrun) with FSDP2 and DDP at
world size 1 through evaluation and an async checkpoint, under NCCL on a GPU (gloo on a CPU).
The JPEG case (`gpu_decode_check.py`, `--decode-only`) times data.decode_device=cuda against
decoding in the loader workers and measures nvJPEG's pixels against PIL's.
Data is synthetic and in memory: nothing here imports deepspeed, webdataset or streaming
(gpu_check.sh blocks those imports to prove it). Results also go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pretrain.dist import DistEnv  # noqa: E402
from pretrain.engines import build_engine  # noqa: E402
from pretrain.metrics import device_peak_flops  # noqa: E402
from pretrain.models import build_model, count_params, get_family  # noqa: E402
from pretrain.models.config import ModelConfig  # noqa: E402
from pretrain.optim_config import OptimConfig  # noqa: E402
from pretrain.parallel_config import ParallelConfig  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    model: dict  # ModelConfig fields; nested sections as dicts
    batch: int


def recipe_model(recipe: str) -> dict:
    """The model section of a recipe in configs/, so the check measures what users train."""
    from pretrain.config import load_config

    return asdict(load_config(REPO / recipe, []).model)


FULL = [
    Case("vit_b16_224", recipe_model("configs/vit_b16_224.yaml"), batch=128),
    Case("dit_xl2_32x32x4", recipe_model("configs/dit_xl2_latents.yaml"), batch=128),
    Case("lm_1b_2048", {"family": "lm", "width": 2048, "depth": 18, "num_heads": 16,
                        "bias": False, "norm": "rmsnorm",
                        "lm": {"vocab_size": 32768, "seq_len": 2048}}, batch=8),
]
TINY = [
    Case("vit_tiny", {"family": "vit", "width": 32, "depth": 2, "num_heads": 2,
                      "vit": {"image_size": 16, "patch_size": 4, "in_channels": 3}}, batch=4),
    Case("dit_tiny", {"family": "dit", "width": 32, "depth": 2, "num_heads": 2,
                      "dit": {"image_size": 8, "patch_size": 2, "in_channels": 4}}, batch=4),
    Case("lm_tiny", {"family": "lm", "width": 32, "depth": 2, "num_heads": 2,
                     "lm": {"vocab_size": 64, "seq_len": 32}}, batch=4),
]


def model_config(case: Case) -> ModelConfig:
    cfg = ModelConfig()
    for key, value in case.model.items():
        if isinstance(value, dict):
            section = getattr(cfg, key)
            for sub, v in value.items():
                setattr(section, sub, v)
        else:
            setattr(cfg, key, value)
    return cfg


def synthetic_batch(cfg: ModelConfig, batch: int, device: torch.device) -> dict:
    """One fixed batch on the device, shaped as the family's loss reads it."""
    g = torch.Generator().manual_seed(0)
    if cfg.family in ("vit", "dit"):
        section = cfg.vit if cfg.family == "vit" else cfg.dit
        side, channels = section.image_size, section.in_channels
        images = torch.randn(batch, channels, side, side, generator=g)
        labels = torch.randint(0, section.num_classes, (batch,), generator=g)
        out = {"image": images, "label": labels}
    else:
        tokens = torch.randint(0, cfg.lm.vocab_size, (batch, cfg.lm.seq_len + 1), generator=g)
        out = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}
    return {k: v.to(device) for k, v in out.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    from pretrain.metrics import peak_rss_bytes

    return peak_rss_bytes() / 1e9  # process peak RSS


def timed(step, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per step over `steps` after `warmup` (compilation, allocator warm-up)."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def project_engine(cfg: ModelConfig, parallel: ParallelConfig, device: torch.device):
    """The trainer's path: meta build, engine (auto: bf16/compile/fused AdamW on a GPU)."""
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    model = build_model(cfg, seed=0, meta=True)
    engine = build_engine(model, get_family(cfg.family).loss, env, parallel=parallel,
                          optim=OptimConfig(lr=1e-4), model_cfg=cfg, global_batch_size=1)
    engine.set_lr(1e-4)
    return engine


def plain_step_fn(cfg: ModelConfig, parallel: ParallelConfig, device: torch.device, batch: dict):
    """A plain loop over the same model, settings and loss: what the engine should cost."""
    model = build_model(cfg, seed=0).to(device)
    if parallel.compile:
        for block in model.blocks:
            block.compile()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    loss_fn = get_family(cfg.family).loss
    bf16 = parallel.mixed_precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_case(case: Case, parallel: ParallelConfig, device: torch.device, steps: int,
               warmup: int, peak: float | None) -> tuple[dict, object]:
    cfg = model_config(case)
    batch = synthetic_batch(cfg, case.batch, device)
    reset_peak(device)
    engine = project_engine(cfg, parallel, device)
    project_s = timed(lambda: engine.train_step([batch]), device, steps, warmup)
    project_mem = peak_memory_gb(device)
    resolved = engine.parallel
    meta = build_model(cfg, seed=0, meta=True)
    flops, tokens = meta.flops_per_sample(), get_family(cfg.family).tokens_per_sample(meta)
    plain = plain_step_fn(cfg, resolved, device, batch)
    reset_peak(device)
    plain_s = timed(plain, device, steps, warmup)
    del plain
    samples_per_s = case.batch / project_s
    row = {
        "model": case.name, "params_m": count_params(meta) / 1e6, "batch": case.batch,
        "mixed_precision": resolved.mixed_precision, "compile": resolved.compile,
        "steps_per_s": 1 / project_s, "tokens_per_s": samples_per_s * tokens,
        "mfu": samples_per_s * flops / peak if peak else None,
        "peak_memory_gb": project_mem, "plain_steps_per_s": 1 / plain_s,
        "ratio_to_plain": plain_s / project_s,
    }
    return row, engine


def checkpoint_rate(engine, device: torch.device, out_dir: Path) -> dict:
    """GB/s of one synchronous save of the engine's state (model + optimizer) to local disk."""
    from pretrain.checkpoint import Checkpointer

    state = engine.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in _tensors(state))
    ckpt = Checkpointer(out_dir, engine.env, keep_last=1)
    sync(device)
    start = time.perf_counter()
    ckpt.save(1, engine, {"step": 1, "samples": 0, "loader": {}, "world_size": 1,
                          "backend": engine.name, "config": {}})
    ckpt.close()
    seconds = time.perf_counter() - start
    return {"checkpoint_gb": nbytes / 1e9, "checkpoint_s": seconds,
            "checkpoint_gb_per_s": nbytes / 1e9 / seconds}


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


def trainer_run(backend: str, device: str, run_dir: Path, tiny: bool,
                timeout: float = 600.0) -> dict:
    """`pretrain train` under torchrun at world size 1: train, evaluate, async checkpoint."""
    width, depth, heads, seq = (32, 2, 2, 32) if tiny else (768, 12, 12, 1024)
    overrides = [
        "model.family=lm", "data.format=memory", "data.name=synthetic_tokens",
        f"model.width={width}", f"model.depth={depth}", f"model.num_heads={heads}",
        f"model.lm.seq_len={seq}", f"data.seq_len={seq}", "data.global_batch_size=8",
        "schedule.steps=6", "schedule.warmup_steps=2", "logging.every_steps=2",
        "logging.eval_every_steps=3", "logging.eval_batches=2", "logging.tensorboard=false",
        "logging.progress_bar=false", "checkpoint.every_steps=3", "checkpoint.async_save=true",
        f"parallel.backend={backend}", f"run.device={device}", f"run.dir={run_dir}",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "pretrain", "train", "configs/lm_bytes.yaml", *overrides]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        returncode, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode = None
        log = f"timed out after {timeout:.0f} s\n" + "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else (part or "")
            for part in (exc.stdout, exc.stderr))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    ok = returncode == 0 and any(r.get("split") == "val" for r in metrics) and checkpoints
    train = [r for r in metrics if r.get("split") == "train"]
    return {"backend": backend, "ok": bool(ok), "seconds": time.perf_counter() - start,
            "last_train_row": train[-1] if train else None, "checkpoints": checkpoints,
            "val_steps": [r["step"] for r in metrics if r.get("split") == "val"],
            "log_tail": "" if ok else log[-3000:]}


def flex_check(device: torch.device, tiny: bool) -> dict:
    """Document-masked attention: FlexAttention's block mask against the dense boolean mask
    (the reference) on packed rows, outputs and (on CUDA) input gradients, with peak memory."""
    import warnings

    from pretrain.models.blocks import Attention, document_block_mask
    from pretrain.models.lm import document_causal_mask

    batch, seq, width, heads = (2, 160, 32, 2) if tiny else (4, 2048, 2048, 16)
    cfg = ModelConfig(family="lm", width=width, num_heads=heads)
    attn = Attention(cfg, causal=True).to(device)
    g = torch.Generator().manual_seed(0)
    starts = torch.rand(batch, seq, generator=g) < 4 / seq  # ~4 documents per row
    starts[:, 0] = True
    doc_ids = starts.long().cumsum(dim=1).to(device)
    x = torch.randn(batch, seq, width, generator=g).to(device)
    train = device.type == "cuda"  # torch has no FlexAttention backward on the CPU
    out = {}
    for name, mask in (("dense", document_causal_mask(doc_ids)),
                       ("flex", document_block_mask(doc_ids))):
        reset_peak(device)
        xi = x.clone().requires_grad_(train)
        with warnings.catch_warnings(), torch.autocast(device.type, torch.bfloat16, enabled=train):
            warnings.simplefilter("ignore")
            with torch.set_grad_enabled(train):
                y = attn(xi, mask)
                if train:
                    y.float().square().mean().backward()
        sync(device)
        out[name] = (y.detach().float(), xi.grad, peak_memory_gb(device))
    dense, flex = out["dense"], out["flex"]
    result = {"max_abs_diff": (flex[0] - dense[0]).abs().max().item(),
              "dense_peak_gb": dense[2], "flex_peak_gb": flex[2]}
    if train:
        result["grad_max_abs_diff"] = (flex[1] - dense[1]).abs().max().item()
    return result


def blocked_imports() -> list[str]:
    """Packages the GPU image lacks that something on this path imported anyway."""
    return [name for name in ("deepspeed", "webdataset", "streaming") if name in sys.modules]


class Sections:
    """Runs the check's sections one by one: a section that raises is recorded (its error line
    and traceback tail) and the rest still run, the JSON is rewritten after each section (a
    device call cut short still returns what was measured), and no section starts after the
    deadline. On a loaned GPU one failure must not cost the other figures."""

    def __init__(self, results: dict, out: str, deadline_s: float, only: str = "") -> None:
        self.results, self.out = results, out
        self.deadline = time.monotonic() + deadline_s if deadline_s > 0 else float("inf")
        self.only = set(only.split(",")) if only else None

    def run(self, name: str, fn) -> object:
        if self.only is not None and name not in self.only:
            return None
        if time.monotonic() > self.deadline:
            self.results.setdefault("skipped", []).append(name)
            print(f"{name}: skipped (past --deadline)", flush=True)
            return None
        start = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # recorded, reported, and the next section runs
            import traceback

            self.results.setdefault("errors", {})[name] = {
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-4000:]}
            print(f"{name}: FAILED after {time.perf_counter() - start:.0f} s: "
                  f"{type(exc).__name__}: {exc}", flush=True)
            print(traceback.format_exc()[-4000:], flush=True)
            return None
        finally:
            self.results.setdefault("section_seconds", {})[name] = round(
                time.perf_counter() - start, 1)
            write_results(self.results, self.out)


def main() -> int:
    parser = argparse.ArgumentParser(description="GPU check (see bench/gpu_check.py)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, runs on a CPU")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 100; tiny 3)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps (default 10; tiny 1)")
    parser.add_argument("--models", default="", help="comma-separated subset of the model names")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-decode", action="store_true", help="no JPEG decode case")
    parser.add_argument("--decode-only", action="store_true", help="only the JPEG decode case")
    parser.add_argument("--only", default="",
                        help="comma-separated sections to run (model names, trainer_fsdp2, "
                             "trainer_ddp, flex_attention, jpeg_decode); default all")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="seconds after which no further section starts (0: none)")
    parser.add_argument("--trainer-timeout", type=float, default=600.0,
                        help="seconds each `pretrain train` run may take")
    parser.add_argument("--out", default="", help="write the results here as JSON")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        print("no GPU: run with --tiny for the CPU smoke version", file=sys.stderr)
        return 2
    steps = args.steps or (3 if args.tiny else 100)
    warmup = args.warmup or (1 if args.tiny else 10)
    cases = [c for c in (TINY if args.tiny else FULL)
             if not args.models or c.name in args.models.split(",")]
    cases = [] if args.decode_only else cases
    parallel = ParallelConfig()  # auto: bf16 + compile + TF32 + fused AdamW on a GPU
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = device_peak_flops(device, 0.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, "
          f"peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s", flush=True)
    results: dict = {"device": device.type, "device_name": name, "torch": torch.__version__,
                     "steps": steps, "warmup": warmup, "models": []}
    sections = Sections(results, args.out, args.deadline, args.only)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:  # most telling first: the real trainer under NCCL, then the LM's MFU, then the rest
        if not args.decode_only and not args.skip_trainer:
            results["trainer"] = []
            for backend in ("fsdp2", "ddp"):
                sections.run(f"trainer_{backend}", lambda b=backend: trainer_section(
                    b, device.type, work / f"run_{b}", args.tiny, args.trainer_timeout, results))
        for case in sorted(cases, key=lambda c: model_config(c).family != "lm"):
            sections.run(case.name, lambda case=case: model_section(
                case, parallel, device, steps, warmup, peak, results, work))
            reset_peak(device)
        if not args.decode_only:
            sections.run("flex_attention", lambda: flex_section(device, args.tiny, results))
        if not args.skip_decode:
            sections.run("jpeg_decode", lambda: decode_section(device, args.tiny, work, results))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(results, args.out)


def model_section(case: Case, parallel: ParallelConfig, device: torch.device, steps: int,
                  warmup: int, peak: float | None, results: dict, work: Path) -> None:
    """One model against its plain loop; for the LM (the largest state), the checkpoint save
    rate."""
    row, engine = bench_case(case, parallel, device, steps, warmup, peak)
    results["models"].append(row)
    mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
    print(f"{row['model']:16s} {row['params_m']:8.1f}M  {row['steps_per_s']:7.2f} steps/s  "
          f"{row['tokens_per_s']:10.0f} tokens/s  MFU {mfu:>6s}  "
          f"peak {row['peak_memory_gb']:6.2f} GB  plain {row['plain_steps_per_s']:7.2f} "
          f"steps/s  ratio {row['ratio_to_plain']:.3f}", flush=True)
    if model_config(case).family == "lm":
        results["checkpoint"] = c = checkpoint_rate(engine, device, work / "ckpt")
        print(f"checkpoint save: {c['checkpoint_gb']:.2f} GB in {c['checkpoint_s']:.2f} s "
              f"= {c['checkpoint_gb_per_s']:.2f} GB/s", flush=True)


def trainer_section(backend: str, device: str, run_dir: Path, tiny: bool, timeout: float,
                    results: dict) -> None:
    r = trainer_run(backend, device, run_dir, tiny, timeout)
    results["trainer"].append(r)
    tail = "\n" + r["log_tail"] if r["log_tail"] else ""
    print(f"trainer {r['backend']:5s}: {'ok' if r['ok'] else 'FAILED'} in "
          f"{r['seconds']:.0f} s, val at steps {r['val_steps']}, "
          f"checkpoints {r['checkpoints']}{tail}", flush=True)


def flex_section(device: torch.device, tiny: bool, results: dict) -> None:
    results["flex_attention"] = f = flex_check(device, tiny)
    print(f"flex vs dense document mask: max |diff| {f['max_abs_diff']:.2e} "
          f"(grad {f.get('grad_max_abs_diff', float('nan')):.2e}), peak memory "
          f"{f['dense_peak_gb']:.2f} GB dense, {f['flex_peak_gb']:.2f} GB flex", flush=True)


def decode_section(device: torch.device, tiny: bool, work: Path, results: dict) -> None:
    from bench.gpu_decode_check import decode_check

    results["jpeg_decode"] = d = decode_check(device, tiny, work)
    print(f"JPEG {d['size']} px, batch {d['batch']}, {d['workers']} workers: decode on "
          f"{device.type} {d['device_decode_samples_per_s']:.0f} samples/s, in CPU "
          f"workers {d['cpu_workers_samples_per_s']:.0f} samples/s, ratio "
          f"{d['ratio']:.2f}; pixels vs PIL: max {d['max_levels']:.0f} levels, mean "
          f"{d['mean_levels']:.3f}, {d['equal_share']:.1%} equal, labels equal "
          f"{d['labels_equal']}; per batch: finish_batch {d['finish_batch_s_per_batch']:.3f} s,"
          f" of which decode {d['decode_images_s_per_batch']:.3f} s; batched step "
          f"{d['batched_s_per_batch']:.3f} s vs per image {d['per_image_s_per_batch']:.3f} s, "
          f"bitwise equal {d['batched_equals_per_image']}", flush=True)


def write_results(results: dict, out: str) -> None:
    results["unexpected_imports"] = blocked_imports()
    if out:
        Path(out).write_text(json.dumps(results, indent=2))


def finish(results: dict, out: str) -> int:
    """Write the JSON; 1 when something failed (a section raised or was skipped, a blocked
    import, a trainer run, labels of the device decode differing from the CPU path's)."""
    write_results(results, out)
    failed = results["unexpected_imports"] or results.get("errors") or results.get("skipped")
    failed = failed or any(not r["ok"] for r in results.get("trainer", []))
    decode = results.get("jpeg_decode", {})
    failed = failed or not decode.get("labels_equal", True)
    failed = failed or not decode.get("batched_equals_per_image", True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
