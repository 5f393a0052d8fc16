"""Rendering of the sbatch script: the options and commands that matter, and hostile values."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.slurm import JobSpec, SlurmConfig, render_sbatch
from pretrain.cli import main as pretrain_main


def spec_for(tmp_path: Path, **slurm) -> JobSpec:
    run_dir = tmp_path / "run-1"
    return JobSpec(run_dir=run_dir, recipe=run_dir / "recipe.yaml", slurm=SlurmConfig(**slurm),
                   workdir=tmp_path)  # fmt: skip


def directives(script: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            out[key] = value or None
    return out


def srun_words(script: str) -> list[str]:
    """The srun command line as the shell splits it (continuations joined, `&` dropped)."""
    text = script[script.index("\nsrun ") + 1 :]
    text = text[: text.index(" &\n")].replace("\\\n", " ")
    return shlex.split(text)


def test_one_node(tmp_path: Path) -> None:
    spec = spec_for(tmp_path)
    script = render_sbatch(spec)
    d = directives(script)
    assert d["nodes"] == "1" and d["ntasks-per-node"] == "1" and d["cpus-per-task"] == "1"
    assert "gpus-per-node" not in d and "partition" not in d and "account" not in d
    assert d["job-name"] == "run-1"
    assert d["signal"] == "USR1@180"  # no B: -> Slurm signals every process of the step
    assert "requeue" in d and d["requeue"] is None
    assert d["open-mode"] == "append"  # restarts append to one log per job
    assert d["output"] == f"{spec.run_dir}/slurm/%j.out"
    assert d["chdir"] == str(tmp_path)
    words = srun_words(script)
    assert words[:5] == ["srun", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1",
                         "--kill-on-bad-exit=1"]  # fmt: skip
    run = words.index("torch.distributed.run")
    assert words[run - 2 : run] == [sys.executable, "-m"]
    assert "--nnodes=1" in words and "--nproc-per-node=1" in words
    assert "--rdzv-backend=c10d" in words and "--max-restarts=0" in words
    assert "--rdzv-endpoint=$head_addr:$rdzv_port" in words
    assert "--rdzv-id=$SLURM_JOB_ID" in words
    assert words[-5:] == ["-m", "pretrain", "train", str(spec.recipe), f"run.dir={spec.run_dir}"]
    # torchrun ignores the warning signal and SIGTERM; the workers get them from Slurm.
    assert "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT" in words
    assert words[words.index("bash") + 2] == 'trap "" USR1 TERM; exec "$@"'
    # The rendezvous host is the first node's NodeAddr, not its name.
    assert 'scontrol show node "$head_node" -o' in script and "NodeAddr=" in script
    assert "rdzv_port=$((20000 + SLURM_JOB_ID % 10000))" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and "MAX_RESTARTS=3" in script
    assert f"export PYTHONPATH={Path(__file__).resolve().parents[1]}" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_four_nodes_eight_gpus(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, nodes=4, gpus_per_node=8, cpus_per_task=64, time="2-00:00:00",
                    partition="gpu", account="proj", qos="high", signal="TERM",
                    signal_seconds=300, max_restarts=7, rdzv_port=29400, job_name="big",
                    sbatch={"constraint": "h100&ib", "exclusive": None, "mem": 0},
                    env={"NCCL_DEBUG": "WARN"})  # fmt: skip
    script = render_sbatch(spec)
    d = directives(script)
    assert d["nodes"] == "4" and d["gpus-per-node"] == "8" and d["cpus-per-task"] == "64"
    assert d["ntasks-per-node"] == "1"  # one torchrun per node
    assert (d["time"], d["partition"], d["account"], d["qos"]) == ("2-00:00:00", "gpu", "proj",
                                                                   "high")  # fmt: skip
    assert d["signal"] == "TERM@300" and d["job-name"] == "big"
    assert d["constraint"] == "h100&ib" and "exclusive" in d and d["mem"] == "0"
    words = srun_words(script)
    assert "--nodes=4" in words and "--cpus-per-task=64" in words
    assert "--nnodes=4" in words and "--nproc-per-node=8" in words
    assert words[words.index("bash") + 2] == 'trap "" TERM TERM; exec "$@"'
    assert "rdzv_port=29400" in script and "MAX_RESTARTS=7" in script
    assert "export NCCL_DEBUG=WARN" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_nproc_per_node_and_no_warning_signal(tmp_path: Path) -> None:
    script = render_sbatch(spec_for(tmp_path, nodes=2, nproc_per_node=3, signal_seconds=0))
    assert "signal" not in directives(script)
    assert "--nproc-per-node=3" in srun_words(script)


@pytest.mark.parametrize(
    "field, value",
    [
        ("job_name", "$(touch /tmp/pwned)"),
        ("job_name", "a'b"),
        ("job_name", "a\nb"),
        ("job_name", "a b"),
        ("partition", "gpu;reboot"),
        ("account", "a\n#SBATCH --uid=0"),
        ("qos", "$(x)"),
        ("time", "1h"),
        ("signal", "KILL"),
        ("nodes", 0),
        ("signal_seconds", 70000),
        ("sbatch", {"comment": "two words"}),
        ("sbatch", {"comment": 'say"hi'}),
        ("sbatch", {"comment": "a\n#SBATCH --uid=0"}),
        ("sbatch", {"x; reboot": "1"}),
        ("sbatch", {"output": "/tmp/elsewhere"}),  # reserved: the launcher sets it
        ("sbatch", {"nodes": 3}),
        ("env", {"A=B": "1"}),
        ("env", {"PATH;x": "1"}),
    ],
)
def test_hostile_values_are_rejected(tmp_path: Path, field: str, value) -> None:
    with pytest.raises(ValueError):
        render_sbatch(spec_for(tmp_path, **{field: value}))


@pytest.mark.parametrize("bad", ["with space", "quo'te", "per%cent"])
def test_hostile_run_dir_is_rejected(tmp_path: Path, bad: str) -> None:
    spec = spec_for(tmp_path)
    spec.run_dir = tmp_path / bad
    with pytest.raises(ValueError):
        render_sbatch(spec)


HOSTILE = ["$(touch CANARY)", "`touch CANARY`", "a'b\"c", "line1\nline2", "; touch CANARY",
           "${HOME}", "\\"]  # fmt: skip


def test_hostile_env_values_are_quoted(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    env = {f"V{i}": value.replace("CANARY", str(canary)) for i, value in enumerate(HOSTILE)}
    script = render_sbatch(spec_for(tmp_path, env=env))
    # Multi-line values continue on following lines: run the whole export block through bash.
    block = script[script.index("export V0") : script.index("\nlog()")]
    shown = subprocess.run(
        ["bash", "-c", block + "\nfor k in " + " ".join(env) + '; do printf "%s\\0" "${!k}"; done'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")[:-1]
    assert shown == list(env.values())
    assert not canary.exists()


def test_hostile_overrides_are_quoted(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    values = [value.replace("CANARY", str(canary)) for value in HOSTILE]
    overrides = [f"x.v{i}={value}" for i, value in enumerate(values)]
    spec = spec_for(tmp_path)
    spec.overrides = overrides
    words = srun_words(render_sbatch(spec))
    assert words[-len(overrides) - 1 : -1] == overrides
    assert not canary.exists()


def test_config_from_dict_names_bad_keys() -> None:
    with pytest.raises(ValueError, match="nodez"):
        SlurmConfig.from_dict({"nodez": 2})
    with pytest.raises(ValueError, match="slurm.nodes must be int"):
        SlurmConfig.from_dict({"nodes": "2"})
    with pytest.raises(ValueError, match="slurm.nodes must be int"):
        SlurmConfig.from_dict({"nodes": True})
    assert SlurmConfig.from_dict({"time": 30}).time == "30"  # minutes, as Slurm reads it
    assert SlurmConfig.from_dict(None) == SlurmConfig()


def write_recipe(tmp_path: Path, **slurm) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"dir": str(tmp_path / "runs" / "r1")},
                                      "optim": {"lr": 0.1}, "slurm": slurm}))  # fmt: skip
    return recipe


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(argv)
    return exit_info.value.code


def test_cli_dry_run_prints_script_and_writes_nothing(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, nodes=2, env={"OMP_NUM_THREADS": "1"})
    code = run_cli(["slurm", "submit", str(recipe), "optim.lr=3e-4", "--nodes", "4",
                    "--gpus-per-node", "8", "--partition", "gpu", "--sbatch", "exclusive",
                    "--env", "FOO=a b", "--dry-run"])  # fmt: skip
    assert code == 0
    script = capsys.readouterr().out
    d = directives(script)
    assert d["nodes"] == "4" and d["gpus-per-node"] == "8" and d["partition"] == "gpu"
    assert "exclusive" in d
    assert "export OMP_NUM_THREADS=1" in script and "export FOO='a b'" in script
    run_dir = tmp_path / "runs" / "r1"
    assert srun_words(script)[-2:] == [str(run_dir / "recipe.yaml"), f"run.dir={run_dir}"]
    assert not (tmp_path / "runs").exists()


def test_cli_rejects_hostile_job_name(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path)
    code = run_cli(["slurm", "submit", str(recipe), "--job-name", "$(reboot)", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2 and "not allowed" in err and out == ""


def test_cli_run_dir_defaults_like_the_trainer(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {lr: 0.1}\nrun: {name: exp1}\n")
    monkeypatch.chdir(tmp_path)
    assert run_cli(["slurm", "submit", str(recipe), "--dry-run"]) == 0
    assert f"run.dir={tmp_path / 'runs' / 'exp1'}" in capsys.readouterr().out


def test_cli_rejects_a_bad_recipe_key_before_queueing(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path)
    code = run_cli(["slurm", "submit", str(recipe), "optim.lrr=1", "--dry-run"])
    out, message = capsys.readouterr()
    assert code == 2 and out == ""
    assert "optim.lrr" in message and "optim.lr" in message  # names the key and the fix


@pytest.mark.parametrize("parallel, expected", [
    ({"backend": "fsdp2"}, "parallel.mesh.dp_replicate=4"),  # HSDP: replicate across nodes
    ({"backend": "fsdp2", "mesh": {"dp_shard": 16, "tp": 2}}, None),  # the recipe's own mesh
    ({"backend": "ddp"}, None),
])
def test_nodes_map_to_the_replicate_dimension(tmp_path: Path, capsys, parallel, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"dir": str(tmp_path / "runs" / "r1")},
                                      "parallel": parallel}))
    assert run_cli(["slurm", "submit", str(recipe), "--nodes", "4", "--gpus-per-node", "8",
                    "--dry-run"]) == 0
    words = srun_words(capsys.readouterr().out)
    mesh_words = [w for w in words if w.startswith("parallel.mesh.")]
    assert mesh_words == ([expected] if expected else [])
