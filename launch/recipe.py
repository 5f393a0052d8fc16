"""Recipes as plain YAML dicts: dotted `key=value` overrides, merged before a job is queued.

The launcher needs a recipe's `run` and `slurm` sections before any trainer code runs, and it
snapshots the merged recipe into the run directory so that a requeued job trains exactly what
was submitted even if the source file is edited meanwhile. Overrides are read by the trainer's
own parser (pretrain/overrides.py), so `lr=0.1` is a float and `name=abc` a string on both
sides; the launcher only adds that keys are dotted identifiers (they name runs and sweep axes).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from pretrain.overrides import get_dotted, parse_override, read_yaml_file, set_dotted

__all__ = ["apply_overrides", "check_key", "dump_recipe", "format_override", "get_dotted",
           "load_recipe", "parse_override"]  # fmt: skip

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_key(key: str) -> str:
    """A dotted key (`optim.lr`), or ValueError: keys end up on a command line."""
    if not _KEY.match(key):
        raise ValueError(f"invalid override key {key!r}: use dotted identifiers like optim.lr")
    return key


def format_override(key: str, value: Any) -> str:
    """Inverse of parse_override: a `key=value` string that parses back to `value`."""
    check_key(key)
    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value
        except yaml.YAMLError:
            same = False
        text = value if same and value.strip() == value and value else json.dumps(value)
    else:
        text = json.dumps(value)
    return f"{key}={text}"


def load_recipe(path: str | Path) -> dict:
    """The recipe file as a dict (empty file -> {})."""
    doc = read_yaml_file(path) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping")
    return doc


def apply_overrides(doc: dict, overrides: dict[str, Any]) -> dict:
    """A deep copy of `doc` with every dotted override set."""
    out = copy.deepcopy(doc)
    for key, value in overrides.items():
        set_dotted(out, check_key(key), value)
    return out


def dump_recipe(doc: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
