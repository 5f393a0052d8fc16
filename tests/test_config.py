import subprocess
import sys

import pytest
import yaml

from pretrain.config import ConfigError, TrainConfig, load_config, save_config, to_dict
from tests.conftest import REPO, subprocess_env


def test_defaults_recipe_and_overrides_merge():
    cfg = load_config(
        REPO / "configs/vit_digits.yaml",
        ["optim.lr=3e-4", "parallel.backend=ddp", "model.vit.pooling=mean"],
    )
    assert cfg.optim.lr == pytest.approx(
        3e-4
    )  # YAML 1.1 reads 3e-4 as a string; the schema makes it float
    assert cfg.parallel.backend == "ddp"
    assert cfg.model.vit.pooling == "mean"
    assert cfg.model.width == 64  # from the recipe
    assert cfg.checkpoint.resume == "auto"  # from the defaults


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1e-3", "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("modle.width=8", "unknown config key 'modle' (did you mean 'model'?)"),
        (
            "model.vit.patch=4",
            "unknown config key 'model.vit.patch' (did you mean 'model.vit.patch_size'?)",
        ),
    ],
)
def test_unknown_key_names_it_and_the_closest(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=fast", "config key 'optim.lr' expects float, got 'fast' (str)"),
        ("schedule.steps=2.5", "config key 'schedule.steps' expects int, got 2.5 (float)"),
        (
            "parallel.backend=fsdp",
            "config key 'parallel.backend' expects one of 'single', 'ddp', 'fsdp2', 'deepspeed', got 'fsdp' (str)",
        ),
        ("checkpoint.async_save=3", "config key 'checkpoint.async_save' expects bool, got 3 (int)"),
        ("optim.betas=0.9", "config key 'optim.betas' expects list[float], got 0.9 (float)"),
    ],
)
def test_wrong_type_names_key_and_expected_type(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_unknown_key_in_recipe_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  weight_decy: 0.1\n")
    with pytest.raises(
        ConfigError,
        match=r"^unknown config key 'optim.weight_decy' \(did you mean 'optim.weight_decay'\?\)$",
    ):
        load_config(recipe)


def test_cli_prints_one_line_error_and_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain", "train", "configs/vit_digits.yaml", "optim.lrr=1"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pretrain train: error: unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"
    ]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs/vit_digits.yaml", ["optim.lr=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == 0.01
    assert isinstance(again, TrainConfig)
