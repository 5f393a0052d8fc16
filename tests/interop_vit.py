"""The tiny trained ViT that the timm and transformers interop tests export: two single-process
steps of configs/vit_digits.yaml at TINY size with a variant's overrides, checkpointed at step 2.
One definition, so both libraries are checked against the same kind of checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import TrainConfig, load_config
from pretrain.trainer import train
from tests.conftest import REPO, TINY

VIT_RECIPE = REPO / "configs/vit_digits.yaml"
TWO_STEPS = ["parallel.backend=single", "schedule.steps=2", "checkpoint.every_steps=2"]


def vit_config(run_dir: Path, *overrides: str) -> TrainConfig:
    return load_config(VIT_RECIPE, [*TINY, *TWO_STEPS, *overrides, f"run.dir={run_dir}"])


def trained_vit(tmp_path_factory: pytest.TempPathFactory, name: str,
                *overrides: str) -> tuple[TrainConfig, Path]:
    """Train the variant in a fresh directory; its config and step-2 checkpoint."""
    cfg = vit_config(tmp_path_factory.mktemp(name) / "run", *overrides)
    train(cfg)
    return cfg, cfg.run_dir / "checkpoints/step_00000002"
