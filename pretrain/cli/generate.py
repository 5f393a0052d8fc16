"""`pretrain generate RUN_DIR|CHECKPOINT --prompt TEXT`: text from a byte-level LM checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
Greedy by default; --top-k K (with --temperature) samples from the K most likely bytes:
  pretrain generate runs/lm_bytes --prompt "The for statement" --max-new-tokens 200
  pretrain generate runs/lm_bytes/checkpoints/step_00001000 --prompt "def " --top-k 8 --seed 1
Given a run directory, the latest complete checkpoint is used. Generation stops at the
end-of-document byte (0) or after --max-new-tokens bytes.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a byte-level LM checkpoint",
        description="Generate text from a decoder LM checkpoint (byte-level vocabulary).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="run directory or checkpoint directory (step_XXXXXXXX)")
    p.add_argument("--prompt", default="\n", help="text to continue (UTF-8)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--top-k", type=int, default=1, help="1 = greedy; 0 = sample from all tokens")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--tokenizer",
        default="",
        help="tokenizer.json of the run's data (a BPE run); default: byte-level, or"
        " the tokenizer.json next to the run's data.train_url when there is one",
    )
    p.set_defaults(func=run)


def resolve_checkpoint(path: Path) -> Path:
    """A committed checkpoint directory: `path` itself, or the latest complete one of a run."""
    from pretrain.checkpoint import TRAIN_STATE, latest_complete

    if (path / TRAIN_STATE).exists():
        return path
    found = latest_complete(path / "checkpoints") if (path / "checkpoints").is_dir() else None
    if found is None:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint nor a run directory with a complete checkpoint"
        )
    return found


def load_lm(checkpoint: Path):
    """(model, config) of the LM in a checkpoint, on CPU, from its saved config and weights."""
    import json

    from pretrain.checkpoint import TRAIN_STATE, read_model_tensors
    from pretrain.config import config_from_dict
    from pretrain.models import get_family
    from pretrain.models.parametrization import set_forward_multipliers

    cfg = config_from_dict(json.loads((checkpoint / TRAIN_STATE).read_text())["config"])
    if cfg.model.family != "lm":
        raise ValueError(f"{checkpoint} holds a model.family={cfg.model.family!r} model, not an lm")
    model = get_family("lm").build(cfg.model)
    set_forward_multipliers(model, cfg.model)  # muP's readout multiplier and attention scale
    model.load_state_dict(read_model_tensors(checkpoint), strict=True)
    return model.eval(), cfg


def run_tokenizer(cfg, given: str):
    """The BPE tokenizer of a run (given, or OUT/tokenizer.json of its dataset), checked against
    the dataset manifest and the model; None for byte-level runs."""
    import os

    from data_pipeline.dataset_meta import dataset_url, token_meta
    from data_pipeline.tokenizer import TOKENIZER_FILE, load_tokenizer

    meta = token_meta(cfg.data) if cfg.data.format in ("wds", "mds") else {}
    path = given
    if not path and meta.get("tokenizer") == "bpe":
        path = os.path.join(
            os.path.dirname(dataset_url(cfg.data, "train").rstrip("/")), TOKENIZER_FILE
        )
    if not path:
        return None
    tok = load_tokenizer(path)
    want = meta.get("tokenizer_sha256")
    if want and want != tok.sha256:
        raise ValueError(
            f"tokenizer {tok.path} (sha256 {tok.sha256[:12]}, vocab {tok.vocab_size})"
            f" is not the one of the run's data {meta['url']} (sha256 {want[:12]},"
            f" vocab {meta.get('vocab_size')})"
        )
    if tok.vocab_size > cfg.model.lm.vocab_size:
        raise ValueError(
            f"tokenizer {tok.path} has vocab_size {tok.vocab_size}, more than the"
            f" model's model.lm.vocab_size={cfg.model.lm.vocab_size}"
        )
    return tok


def generate_text(
    checkpoint: Path,
    prompt: str,
    max_new_tokens: int,
    top_k: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    tokenizer: str = "",
) -> str:
    """The continuation of `prompt` (bytes decoded as UTF-8, invalid sequences replaced; or
    decoded by the run's BPE tokenizer, stopping at its end-of-document token)."""
    import torch

    from data_pipeline.text_memory import EOS
    from pretrain.models.lm_generate import generate

    model, cfg = load_lm(resolve_checkpoint(checkpoint))
    tok = run_tokenizer(cfg, tokenizer)
    ids, stop = (
        (list(prompt.encode("utf-8")), EOS) if tok is None else (tok.encode(prompt), tok.eos_id)
    )
    new = generate(
        model,
        ids,
        max_new_tokens,
        top_k,
        temperature,
        stop_token=stop,
        generator=torch.Generator().manual_seed(seed),
    )
    if tok is not None:
        return tok.decode(new)
    return bytes(new).decode("utf-8", errors="replace")


def run(args: argparse.Namespace) -> int:
    text = generate_text(
        Path(args.checkpoint),
        args.prompt,
        args.max_new_tokens,
        args.top_k,
        args.temperature,
        args.seed,
        args.tokenizer,
    )
    print(args.prompt + text)
    return 0
