"""`pretrain ckpt inspect|verify|convert|export|import|reshard`: check checkpoints, and move them
between backends, world sizes and safetensors. Every command streams tensor by tensor (bounded
memory)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
DST is a step_XXXXXXXX directory, or a directory in which one is created (e.g. a new run's
checkpoints/, where `pretrain train ... run.dir=RUN` resumes from it by itself).

examples:
  pretrain ckpt inspect runs/a/checkpoints/step_00000100
  pretrain ckpt verify runs/a/checkpoints/step_00000100
      (every file against the manifest's size and checksum; exit 2 naming the first bad file)
  pretrain ckpt convert runs/a/checkpoints/step_00000100 runs/b/checkpoints --to dcp
      (a DeepSpeed ZeRO-1/2/3 checkpoint -> DCP: resume it with FSDP2/DDP on any number of ranks)
  pretrain ckpt convert runs/b/checkpoints/step_00000100 runs/c/checkpoints --to deepspeed
      (-> DeepSpeed universal: resume it with ZeRO-1/2/3 on any number of ranks)
  pretrain ckpt reshard SRC DST
      (a DeepSpeed checkpoint, for another world size or ZeRO stage)
  pretrain ckpt export SRC model.safetensors --dtype bf16
  pretrain ckpt import model.safetensors runs/d/checkpoints \\
      --config configs/vit_digits.yaml model.width=128
      (a step-0 checkpoint with fresh optimizer state; then: pretrain train RECIPE run.dir=runs/d)
  pretrain ckpt export runs/lm_bytes hf_out --format hf
      (a transformers folder: AutoModelForCausalLM.from_pretrained("hf_out"); the tokenizer too)
  pretrain ckpt import hf_out runs/e/checkpoints --config configs/lm_bytes.yaml
      (a transformers / diffusers / timm folder: config fields, names and shapes checked first)
"""

RAW = argparse.RawDescriptionHelpFormatter  # the examples' lines kept as written

EXAMPLES = {
    "inspect": """\
examples:
  pretrain ckpt inspect runs/vit_digits/checkpoints/step_00000600
  pretrain ckpt inspect vit_digits.safetensors --json   # a .safetensors file too
""",
    "verify": """\
examples:
  pretrain ckpt verify runs/vit_digits/checkpoints/step_00000600   # exit 2 names the first bad file
""",
    "convert": """\
examples:
  pretrain ckpt convert runs/lm_zero3/checkpoints/step_00002000 runs/lm_fsdp/checkpoints --to dcp
      # DeepSpeed ZeRO-1/2/3 -> DCP: resume with FSDP2/DDP on any number of ranks
  pretrain ckpt convert runs/lm_fsdp/checkpoints/step_00004000 runs/lm_zero2/checkpoints \\
      --to deepspeed   # -> DeepSpeed universal: resume with ZeRO-1/2/3 on any number of ranks
""",
    "reshard": """\
examples:
  pretrain ckpt reshard runs/lm_zero3/checkpoints/step_00002000 runs/lm_zero3_64/checkpoints
      # then resume at the new world size or ZeRO stage with run.dir=runs/lm_zero3_64
""",
    "export": """\
examples:
  pretrain ckpt export runs/vit_digits vit_digits.safetensors   # the run's latest checkpoint
  pretrain ckpt export runs/lm_bytes hf_out --format hf --dtype bf16   # a transformers folder
  pretrain ckpt export runs/dit_xl2_latents/checkpoints/step_00400000 dit_xl2_ema.safetensors \\
      --ema   # the EMA of the weights (optim.ema_decay > 0)
""",
    "import": """\
examples:
  pretrain ckpt import hf_out runs/lm_next/checkpoints --config configs/lm_bytes.yaml
      # a transformers folder; then: pretrain train configs/lm_bytes.yaml run.dir=runs/lm_next
  pretrain ckpt import vit.safetensors runs/vit_ft/checkpoints --strip-prefix module. \\
      --config configs/vit_digits.yaml model.depth=6   # a DDP state dict of a 6-layer ViT
""",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ckpt",
        help="inspect, convert and export checkpoints",
        epilog=EPILOG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="ckpt_command", metavar="ACTION", required=True)

    s = sub.add_parser(
        "inspect", help="tensors, shapes, dtypes, step, world size, backend, size on disk"
    )
    s.add_argument("path", type=Path)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=run_inspect)

    s = sub.add_parser("verify", help="every file's size and checksum against the manifest")
    s.add_argument("path", type=Path)
    s.set_defaults(func=run_verify)

    s = sub.add_parser("convert", help="DCP <-> DeepSpeed ZeRO, optimizer state included")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--to", choices=["dcp", "deepspeed"], required=True)
    s.set_defaults(func=run_convert)

    s = sub.add_parser(
        "reshard", help="a DeepSpeed checkpoint -> universal (any world size / ZeRO stage)"
    )
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.set_defaults(func=run_reshard)

    s = sub.add_parser(
        "export",
        help="weights to one .safetensors file, or a transformers "
        "(--format hf) / diffusers (--format diffusers) / timm (--format timm) model folder",
    )
    s.add_argument("src", type=Path, help="checkpoint, or run directory (its latest checkpoint)")
    s.add_argument("out", type=Path)
    s.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    s.add_argument(
        "--format",
        choices=["safetensors", "hf", "diffusers", "timm"],
        default="safetensors",
        help="hf: LM -> Llama/Qwen3/GPT-NeoX (pre-norm), Gemma2/Gemma3 (Peri-LN), "
        "ViT -> ViTForImageClassification; "
        "diffusers: DiT -> DiTTransformer2DModel; "
        "timm: ViT -> timm.create_model('local-dir:OUT', pretrained=True)",
    )
    s.add_argument(
        "--tokenizer",
        default="",
        help="LM: tokenizer.json to ship (default: the run's, from data.tokenizer or its dataset)",
    )
    s.add_argument("--max-shard-mb", type=int, default=5120,
                   help="hf / diffusers folders: shard size (timm reads one file)")
    s.add_argument("--ema", action="store_true",
                   help="export the EMA of the weights (a run with optim.ema_decay > 0)")
    s.set_defaults(func=run_export)

    s = sub.add_parser(
        "import",
        help="a .safetensors file or a transformers/diffusers folder -> "
        "a step-0 checkpoint to start a run from",
    )
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument(
        "--config",
        required=True,
        nargs="+",
        metavar="RECIPE [key=value ...]",
        help="the recipe (and overrides) of the model the weights are for",
    )
    s.add_argument(
        "--strip-prefix",
        default="",
        metavar="P",
        help="remove P from the front of each name (e.g. 'model.' or 'module.')",
    )
    s.add_argument("--add-prefix", default="", metavar="P", help="put P before each name")
    s.set_defaults(func=run_import)

    for name, action in sub.choices.items():  # every action's --help ends with its examples
        action.epilog, action.formatter_class = EXAMPLES[name], RAW


def run_inspect(args: argparse.Namespace) -> int:
    from pretrain.checkpoint.convert import inspect

    info = inspect(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    tensors = info.pop("tensors")
    for key, value in info.items():
        print(f"{key:>16}: {value}")
    width = max((len(t["name"]) for t in tensors), default=0)
    for t in tensors:
        print(f"  {t['name']:<{width}}  {t['dtype']:<9} {tuple(t['shape'])}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every file matches the manifest, 2 naming the first that does not."""
    from pretrain.checkpoint import CheckpointError, read_manifest, verify_checkpoint

    try:
        reason = verify_checkpoint(args.path)
        manifest = read_manifest(args.path) if reason is None else {}
    except CheckpointError as e:
        reason = str(e)
    if reason is not None:
        raise CheckpointError(f"{args.path}: {reason}")
    files = len(manifest["files"])
    if "checksums" in manifest:
        print(f"{args.path}: {files} files verified ({manifest['checksum']} checksums and sizes)")
    else:
        print(
            f"{args.path}: {files} files size-checked only (the manifest has no checksums: "
            "written before they existed)"
        )
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from pretrain.checkpoint.convert import convert

    out = convert(args.src, args.dst, args.to)
    print(f"wrote {out} ({args.to})")
    return 0


def run_reshard(args: argparse.Namespace) -> int:
    from pretrain.checkpoint.convert import reshard

    out = reshard(args.src, args.dst)
    if out is None:
        print(
            f"{args.src} is DCP, which reshards on load to any world size: resume from it directly"
        )
    else:
        print(f"wrote {out} (DeepSpeed universal: loads into ZeRO-1/2/3 at any world size)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import torch

    from pretrain.checkpoint.convert import export_safetensors

    if args.format != "safetensors":
        return run_export_folder(args)
    from pretrain.checkpoint import TRAIN_STATE
    from pretrain.cli.generate import resolve_checkpoint

    src = args.src  # a checkpoint (ours, plain DCP or DeepSpeed), or a run: its latest
    if (src / "checkpoints").is_dir() and not (src / TRAIN_STATE).exists():
        src = resolve_checkpoint(src)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    out = export_safetensors(src, args.out, dtype=dtype, ema=args.ema)
    print(f"wrote {out} ({args.dtype}{', EMA weights' if args.ema else ''})")
    return 0


def run_export_folder(args: argparse.Namespace) -> int:
    """--format hf / diffusers: a model folder another library loads with from_pretrained."""
    import torch

    from pretrain.cli.generate import resolve_checkpoint, run_tokenizer
    from pretrain.interop import checkpoint_config, export_folder

    ckpt = resolve_checkpoint(args.src)
    cfg = checkpoint_config(ckpt)
    tok = None
    if cfg.model.family == "lm":
        tok = run_tokenizer(cfg, args.tokenizer or cfg.data.tokenizer)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    out = export_folder(ckpt, args.out, args.format, dtype, tok, args.max_shard_mb * 2**20,
                        ema=args.ema)
    weights = "EMA weights of " if args.ema else ""
    print(f"wrote {out} ({args.format}, {args.dtype}, from {weights}{ckpt})")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from pretrain.checkpoint.convert import import_safetensors
    from pretrain.config import load_config

    cfg = load_config(args.config[0], args.config[1:])
    if args.src.is_dir():  # a transformers / diffusers model folder
        from pretrain.interop import folder_format, import_folder

        out = import_folder(args.src, args.dst, cfg, folder_format(args.src))
    else:
        out = import_safetensors(args.src, args.dst, cfg, args.strip_prefix, args.add_prefix)
    print(f"wrote {out}; start a run from it with checkpoint.resume={out}")
    return 0
