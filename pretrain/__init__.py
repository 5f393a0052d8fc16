"""pretrain: one trainer for muP ViTs, DiTs and decoder LMs over FSDP2 / DDP / DeepSpeed."""

__version__ = "0.1.0"
