"""Launchers: local torchrun, Slurm submission with requeue, sweeps and run status."""
