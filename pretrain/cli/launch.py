"""`pretrain launch local --nproc N RECIPE [key=value ...]`: torchrun on this machine."""

from __future__ import annotations

import argparse
import shlex

from launch.local import launch_env, run_supervised, supervised_torchrun_command

LOCAL_EPILOG = """\
examples:
  pretrain launch local --nproc 2 configs/vit_digits.yaml
  pretrain launch local --nproc 2 configs/lm_bytes.yaml parallel.backend=ddp run.name=lm_ddp
  pretrain launch local --nproc 4 configs/dit_digits.yaml --dry-run   # print the command only
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "launch",
        help="launch a recipe on this machine with torchrun",
        description="Launch a multi-process run on this machine (torchrun --standalone).",
        epilog="example: pretrain launch local --nproc 2 configs/vit_digits.yaml "
        "parallel.backend=fsdp2",
    )
    sub = p.add_subparsers(dest="where", metavar="WHERE", required=True)
    local = sub.add_parser(
        "local", help="torchrun with N processes on this machine", epilog=LOCAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    local.add_argument(
        "--nproc", type=int, default=2, help="processes (ranks) to start (default 2)"
    )
    local.add_argument(
        "--dry-run", action="store_true", help="print the command instead of running it"
    )
    local.add_argument("recipe", help="YAML recipe")
    local.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    local.set_defaults(func=run)


def check_data_exists(data) -> None:
    """FileNotFoundError naming the key of a local dataset path that does not exist (remote
    URLs and shard patterns are left to the loader)."""
    from data_pipeline.shard_urls import is_shard_spec
    from data_pipeline.storage import is_local, open_fs

    if data.format == "memory":
        return
    urls = {f"data.mixture[{url!r}]": url for url in data.mixture} or {
        "data.train_url": data.train_url}
    urls |= {"data.val_url": data.val_url} if data.val_url else {}
    urls |= {"data.tokenizer": data.tokenizer} if data.tokenizer else {}
    for key, url in urls.items():
        if not url:
            raise FileNotFoundError(2, f"empty, but data.format={data.format} needs it", key)
        fs, path = open_fs(url, data.storage_options)
        if is_local(fs) and not is_shard_spec(url) and not fs.exists(path):
            raise FileNotFoundError(2, f"no such file or directory ({key})", url)


def run(args: argparse.Namespace) -> int:
    from pretrain.config import load_config

    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    cfg = load_config(args.recipe, args.overrides)  # before torchrun: one error line, not 2N+35
    check_data_exists(cfg.data)
    cmd = supervised_torchrun_command(args.nproc, args.recipe, args.overrides)
    env = launch_env(args.nproc)
    if args.dry_run:
        print(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} " + shlex.join(cmd))
        return 0
    return run_supervised(cmd, env)  # SIGTERM/USR1/USR2 reach the ranks; 0 after preemption
