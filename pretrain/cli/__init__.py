"""The `pretrain` console script: a thin dispatcher over subcommands.

Each subcommand lives in its own module exposing `register(subparsers)`; that module adds its
parser and sets `func` (called with the parsed args). Modules are imported lazily, only the one
that is asked for is imported with its heavy dependencies. Every expected failure ends as one
`pretrain <cmd>: error: ...` line and exit code 2 (pretrain/cli/errors.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pretrain.cli.errors import debug_requested, expected_errors, report

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
        "Run `pretrain COMMAND --help` for each command. Errors are one line (exit 2); "
        "--debug anywhere (or PRETRAIN_DEBUG=1) shows the traceback.",
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


def leaf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand that argv names, e.g. `pretrain data index`'s."""
    node = parser
    for token in argv:
        subs = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if token in subs[0].choices:
            node = subs[0].choices[token]
    return node


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv; `key=value` overrides may also come after flags (`train R --flag a.b=1`)."""
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if extra and isinstance(overrides, list):
        if all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = overrides + extra
            return args
    if extra:
        leaf_parser(parser, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug, argv = debug_requested(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only=command)
    if command is None:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return
    args = parse(parser, argv)
    if not hasattr(args, "func"):
        parser.parse_args([command, "--help"])
    prog = leaf_parser(parser, argv).prog
    try:
        result = args.func(args)
    except SystemExit as e:  # raise SystemExit("message"): a refusal, the same one line
        if debug or not isinstance(e.code, str):
            raise
        result = report(prog, ValueError(e.code))
    except expected_errors() as e:
        if debug:
            raise
        result = report(prog, e)
    sys.exit(result if isinstance(result, int) else 0)
