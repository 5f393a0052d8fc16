"""The run's tokenizer next to an exported LM, as `AutoTokenizer.from_pretrained` reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.interop.folder import write_json


def special_ids(tok: Any | None) -> dict[str, int | None]:
    """bos/eos/pad ids for config.json (None for byte-level runs, which have no tokenizer)."""
    if tok is None:
        return {}
    return {"eos": tok.eos_id, "pad": tok.pad_id}


def write_tokenizer(tok: Any, out: Path, max_length: int) -> None:
    """tokenizer.json as the run used it, and a tokenizer_config.json naming its specials."""
    (out / "tokenizer.json").write_text(tok.json_text, encoding="utf-8")
    token = tok.backend.id_to_token
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
        "eos_token": token(tok.eos_id), "pad_token": token(tok.pad_id),
        "clean_up_tokenization_spaces": False,
    })
