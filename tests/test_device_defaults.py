"""`auto` settings: the GPU fast path where a GPU is described, today's CPU behaviour elsewhere,
and the resolved values (not "auto") in the run's config.yaml."""

from __future__ import annotations

import yaml

from launch.slurm_config import LOADER_WORKERS_PER_GPU, SlurmConfig
from pretrain.config import TrainConfig
from pretrain.device_defaults import DeviceInfo, loader_workers, resolve_auto
from tests.conftest import TINY, run_train

H100_NODE_RANK = DeviceInfo(type="cuda", bf16=True, cpus=96, procs_per_node=8)
V100_RANK = DeviceInfo(type="cuda", bf16=False, cpus=8, procs_per_node=1)
CPU = DeviceInfo(type="cpu", cpus=2, procs_per_node=2)


def test_a_gpu_gets_bf16_tf32_fused_adamw_compile_workers_and_pinned_memory():
    cfg = resolve_auto(TrainConfig(), H100_NODE_RANK)
    assert cfg.parallel.mixed_precision == "bf16" and cfg.parallel.tf32 is True
    assert cfg.parallel.compile is True and cfg.optim.fused is True
    assert cfg.data.num_workers == LOADER_WORKERS_PER_GPU and cfg.data.pin_memory is True


def test_a_cpu_keeps_the_previous_defaults():
    cfg = resolve_auto(TrainConfig(), CPU)
    assert cfg.parallel.mixed_precision == "none" and cfg.parallel.tf32 is False
    assert cfg.parallel.compile is False and cfg.optim.fused is False
    assert cfg.data.num_workers == 0 and cfg.data.pin_memory is False


def test_explicit_values_win_and_a_gpu_without_bf16_stays_fp32():
    cfg = TrainConfig()
    cfg.parallel.compile, cfg.data.num_workers, cfg.parallel.mixed_precision = False, 3, "none"
    out = resolve_auto(cfg, H100_NODE_RANK)
    assert (out.parallel.compile, out.data.num_workers) == (False, 3)
    assert out.parallel.mixed_precision == "none"
    assert cfg.parallel.tf32 == "auto"  # the input is not modified
    assert resolve_auto(TrainConfig(), V100_RANK).parallel.mixed_precision == "none"


def test_loader_workers_leave_each_rank_a_core():
    assert loader_workers(DeviceInfo(type="cuda", cpus=16, procs_per_node=8)) == 1
    assert loader_workers(DeviceInfo(type="cuda", cpus=24, procs_per_node=8)) == 2
    assert loader_workers(DeviceInfo(type="cuda", cpus=4, procs_per_node=8)) == 1


def test_slurm_cpus_per_task_auto_matches_the_loader_workers():
    assert SlurmConfig().task_cpus() == 1  # no GPUs: as before
    gpus = SlurmConfig(gpus_per_node=8)
    per_rank = gpus.task_cpus() // 8
    rank = DeviceInfo(type="cuda", cpus=gpus.task_cpus(), procs_per_node=8)
    assert per_rank == LOADER_WORKERS_PER_GPU + 1 and loader_workers(rank) == LOADER_WORKERS_PER_GPU
    assert SlurmConfig(gpus_per_node=8, cpus_per_task=64).task_cpus() == 64


def test_the_run_dir_config_records_what_ran(tmp_path):
    run_train(0, [*TINY, "schedule.steps=1", f"run.dir={tmp_path}"])
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["parallel"]["mixed_precision"] == "none" and saved["parallel"]["compile"] is False
    assert saved["optim"]["fused"] is False and saved["parallel"]["tf32"] is False
    assert saved["data"]["pin_memory"] is False  # (the recipe sets num_workers itself)
