"""`pretrain train RECIPE [key=value ...]`: run or resume one training run."""

from __future__ import annotations

import argparse

EPILOG = """\
Overrides are dotted keys of the recipe, parsed as YAML values:
  pretrain train configs/vit_digits.yaml optim.lr=3e-4 parallel.backend=fsdp2 run.name=lr3e-4
Multi-process: pretrain launch local --nproc 2 configs/vit_digits.yaml
The run directory (run.dir, default runs/<run.name>) gets config.yaml, metrics.jsonl, tb/,
checkpoints/ and status.json. Running the same command again resumes from the latest complete
checkpoint (checkpoint.resume=auto); checkpoint.resume=none starts over.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train from a YAML recipe (with dotted overrides)",
        description="Train (or resume) from a YAML recipe.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="YAML recipe, e.g. configs/vit_digits.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from pretrain.config import load_config, to_dict

    cfg = load_config(args.recipe, args.overrides)  # a ConfigError: one line (pretrain.cli)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from pretrain.dist import shutdown
    from pretrain.trainer import train

    try:
        train(cfg)
    finally:
        shutdown()
    return 0
