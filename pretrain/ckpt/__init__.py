"""Checkpoint tools: inspect, convert between DCP and DeepSpeed ZeRO, safetensors, reshard.

Every conversion streams: a source yields one full (unsharded) tensor at a time, a sink writes
it, so peak memory follows the largest tensor, not the checkpoint.
"""
