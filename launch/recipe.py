"""Recipes as plain YAML dicts: dotted `key=value` overrides, merged before a job is queued.

The launcher needs a recipe's `run` and `slurm` sections before any trainer code runs, and it
snapshots the merged recipe into the run directory so that a requeued job trains exactly what
was submitted even if the source file is edited meanwhile. Values of overrides are parsed as
YAML scalars (`lr=3e-4` is a float, `name=abc` a string), as the trainer's CLI does.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_key(key: str) -> str:
    """A dotted key (`optim.lr`), or ValueError: keys end up on a command line."""
    if not _KEY.match(key):
        raise ValueError(f"invalid override key {key!r}: use dotted identifiers like optim.lr")
    return key


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=3e-4` -> ("optim.lr", 0.0003)."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ValueError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # as the trainer reads it: not YAML, so a plain string
    return check_key(key.strip()), value


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


def set_dotted(doc: dict, key: str, value: Any) -> None:
    """Set doc[a][b][c] = value for key "a.b.c", creating sections as needed."""
    parts = check_key(key).split(".")
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ValueError(f"cannot set {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(doc: dict, key: str, default: Any = None) -> Any:
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def load_recipe(path: str | Path) -> dict:
    """The recipe file as a dict (empty file -> {})."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping")
    return doc


def apply_overrides(doc: dict, overrides: dict[str, Any]) -> dict:
    """A deep copy of `doc` with every dotted override set."""
    out = copy.deepcopy(doc)
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def dump_recipe(doc: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
