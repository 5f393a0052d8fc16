"""The `pretrain` console script: a thin dispatcher over subcommands.

Each subcommand lives in its own module exposing `register(subparsers)`; that module adds its
parser and sets `func` (called with the parsed args). Modules are imported lazily, only the one
that is asked for is imported with its heavy dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). The module's register() builds the real parser.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pretrain.cli.train", "train from a YAML recipe (with dotted overrides)"),
    "launch": ("pretrain.cli.launch", "launch a recipe on this machine with torchrun"),
    "data": ("pretrain.cli.data", "build and inspect sharded datasets"),
    "slurm": ("pretrain.cli.slurm", "submit runs and sweeps to Slurm"),
    "runs": ("pretrain.cli.runs", "show the state of run directories"),
    "ckpt": ("pretrain.cli.ckpt", "inspect, convert and export checkpoints"),
    "generate": ("pretrain.cli.generate", "generate text from a language-model checkpoint"),
    "mup": ("pretrain.cli.mup", "muP coordinate checks and LR-transfer sweeps"),
    "scaling": ("pretrain.cli.scaling", "plan, collect and fit scaling-law studies"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain",
        description="Distributed pretraining of ViTs, DiTs and decoder LMs. "
        "Run `pretrain COMMAND --help` for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if only == name:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name and module.startswith(e.name):
                    parser.error(f"command {name!r} is not available in this version")
                raise
            mod.register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only=command)
    if command is None:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.parse_args([command, "--help"])
    result = args.func(args)
    sys.exit(result if isinstance(result, int) else 0)
