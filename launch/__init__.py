"""Launchers: torchrun on one machine (local) and Slurm (multi-node, preemption, sweeps)."""
