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
            "config key 'parallel.backend' expects one of 'single', 'ddp', 'fsdp2', 'deepspeed', "
            "got 'fsdp' (str)",
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


# ---------------------------------------------------------------- where the sections live

PROJECT = ("pretrain", "data_pipeline", "launch")


def section_modules(cls: type = TrainConfig) -> set[str]:
    """Modules defining the dataclasses TrainConfig is assembled from, at any depth."""
    import dataclasses
    import typing

    out: set[str] = set()
    for tp in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(tp):
            out |= {tp.__module__} | section_modules(tp)
    return out


def project_imports(module: str) -> set[str]:
    """Project modules that `module`'s source imports (any branch, TYPE_CHECKING included)."""
    import ast

    path = REPO / (module.replace(".", "/") + ".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import"
            for alias in node.names:  # `from pretrain import x` may name the module pretrain.x
                sub = f"{node.module}.{alias.name}"
                is_module = (REPO / (sub.replace(".", "/") + ".py")).exists()
                found.add(sub if is_module else node.module)
    return {m for m in found if m.split(".")[0] in PROJECT}


def test_config_sections_are_leaves():
    """Every section imports no project module but other sections, so the config depends on no
    engine, launcher or trainer code, whatever grows in the modules they configure."""
    sections = section_modules()
    assert {"pretrain.optim_config", "pretrain.parallel_config", "launch.slurm_config",
            "pretrain.models.config", "data_pipeline.config"} <= sections  # fmt: skip
    for module in sections:
        # other sections, or helpers that themselves import nothing from the project
        # (e.g. data_pipeline.safe_names, the one name -> path rule)
        helpers = project_imports(module) - sections
        assert all(project_imports(h) == set() for h in helpers), (module, helpers)
    assert project_imports("pretrain.overrides") == set()


def test_config_assembles_sections_only():
    assert project_imports("pretrain.config") <= section_modules() | {"pretrain.overrides"}
    code = (
        "import sys, pretrain.config\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pretrain', 'launch', 'data_pipeline'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, check=True)  # fmt: skip
    loaded = set(proc.stdout.split())
    assert {m for m in loaded if m.startswith(("launch", "pretrain.engines"))} == {
        "launch",
        "launch.slurm_config",
    }
    assert "pretrain.parallel_config" in loaded
    assert not loaded & {"pretrain.trainer", "pretrain.checkpoint", "pretrain.optim"}


def test_one_override_parser_for_trainer_and_launcher():
    import launch.recipe
    import pretrain.config

    assert launch.recipe.parse_override is pretrain.config.parse_override
    assert pretrain.config.parse_override(" optim.lr=0.5") == ("optim.lr", 0.5)
    assert pretrain.config.parse_override("run.name=") == ("run.name", "")
    assert pretrain.config.parse_override("run.name='x") == ("run.name", "'x")  # not YAML: text
    with pytest.raises(ConfigError, match="empty key part"):
        load_config(None, ["optim..lr=1"])
    with pytest.raises(ConfigError, match="'optim' is not a section"):
        load_config(None, ["optim=1", "optim.lr=2"])


def test_deepspeed_config_takes_sections_and_merges_extra_deeply():
    from pretrain.engines.deepspeed_config import ds_config

    extra = "parallel.deepspeed.extra={zero_optimization: {overlap_comm: true}}"
    cfg = load_config(None, ["optim.grad_accum=2", "parallel.mixed_precision=bf16",
                             "parallel.deepspeed.zero_stage=3", extra])  # fmt: skip
    ds = ds_config(cfg.parallel, cfg.optim, global_batch_size=16, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    with pytest.raises(ValueError, match="global_batch_size=12 is not divisible"):
        ds_config(cfg.parallel, cfg.optim, global_batch_size=12, world_size=4)
