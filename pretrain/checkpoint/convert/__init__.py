"""Checkpoint tools: inspect, convert between DCP and DeepSpeed ZeRO, safetensors, reshard.

Every conversion streams: a source yields one full (unsharded) tensor at a time, a sink writes
it, so peak memory follows the largest tensor, not the checkpoint.
"""

from pretrain.checkpoint.convert.mismatch import CheckpointMismatchError
from pretrain.checkpoint.convert.operations import (
    convert,
    export_safetensors,
    import_safetensors,
    inspect,
    reshard,
)
from pretrain.checkpoint.convert.sources import CheckpointFormatError, open_source

__all__ = [
    "CheckpointFormatError", "CheckpointMismatchError", "convert", "export_safetensors",
    "import_safetensors", "inspect", "open_source", "reshard",
]
