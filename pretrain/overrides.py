"""Dotted overrides on nested recipe dicts: the one parser and the one deep merge.

`pretrain train`, `pretrain slurm submit|sweep`, the scaling tools and the DeepSpeed config's
`extra` section all combine nested dicts through these functions, so an override means the same
thing wherever it is typed. Imports no project module: launch/ and engines/ use it without
loading the config schema (whose model section pulls in torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message is one line."""


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=0.1` -> ("optim.lr", 0.1): the value is read as YAML, else kept as text.

    YAML 1.1 reads `3e-4` as a string; the schema (pretrain/config.py) makes it a float."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML (an unbalanced quote...): the plain string
    return key, value


def read_yaml_file(path: str | Path, what: str = "recipe") -> Any:
    """The YAML document at `path` (safe loader: a `!!python` tag is refused), or a one-line
    ConfigError naming the file and what it should have been."""
    text = Path(path).read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from e


def set_dotted(doc: dict, key: str, value: Any) -> None:
    """doc[a][b][c] = value for key "a.b.c", creating missing (or empty) sections."""
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(doc: dict, key: str, default: Any = None) -> Any:
    """doc[a][b][c] for key "a.b.c", or `default` where the path stops."""
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def merge(base: dict, update: dict) -> dict:
    """`base` updated by `update`, recursing into sections both have; neither is modified."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
