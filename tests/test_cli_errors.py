"""Every `pretrain` subcommand on bad input: one `pretrain <cmd>: error: ...` line naming the
culprit, exit code 2, no traceback (pretrain/cli/errors.py); config values range-checked at load."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.cli import main
from pretrain.config import ConfigError, load_config
from tests.conftest import REPO, subprocess_env

RECIPE = str(REPO / "configs" / "vit_digits.yaml")


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of bad inputs: each file is wrong in one way a user meets."""
    root = tmp_path_factory.mktemp("bad")
    (root / "evil.yaml").write_text('model:\n  width: !!python/object/apply:os.system ["true"]\n')
    (root / "typo.yaml").write_text("model:\n  widht: 64\n")
    (root / "garbage.safetensors").write_text("garbage")
    (root / "notckpt").mkdir()
    (root / "notckpt" / "x.txt").write_text("hi")
    (root / "fakedcp").mkdir()
    (root / "fakedcp" / ".metadata").write_text("junk")
    (root / "fakedcp" / "__0_0.distcp").write_text("junk")
    (root / "fakeds").mkdir()
    (root / "fakeds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"PK\x03\x04x")
    (root / "fakeds" / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04garbage")
    (root / "badtar").mkdir()
    (root / "badtar" / "shard-000000.tar").write_text("not a tar")
    (root / "badsweep.yaml").write_text(f"name: x\nbase: {RECIPE}\n")
    (root / "runs.csv").write_text("run,params,tokens,flops,loss\nonly,1,2,3,zz\n")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": f"document {i}"}) + "\n"
                                             for i in range(40)))
    assert main_exit(["data", "build", "text", "--format", "wds", "--out", str(root / "text"),
                      "--src", str(root / "docs.jsonl"), "--seq-len", "16"]) == 0
    return root


def main_exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


# (argv with {b} = the bad-input folder, text the error line must contain)
CASES = [
    (["train", "{b}/evil.yaml"], "evil.yaml"),
    (["train", "{b}/typo.yaml"], "model.widht"),
    (["train", "{b}/missing.yaml"], "missing.yaml"),
    (["train", RECIPE, "model.num_heads=0"], "model.num_heads"),
    (["train", RECIPE, "model.width=-64"], "model.width"),
    (["train", RECIPE, "model.width=66", "model.num_heads=4"], "model.num_heads=4"),
    (["train", RECIPE, "data.global_batch_size=0"], "data.global_batch_size"),
    (["train", RECIPE, "optim.grad_accum=0"], "optim.grad_accum"),
    (["train", RECIPE, "schedule.steps=-5"], "schedule.steps"),
    (["train", RECIPE, "data.format=wds", "data.train_url={b}/badtar", "run.dir={b}/run1",
      "logging.progress_bar=false", "logging.tensorboard=false"], "shard-000000.tar"),
    (["launch", "local", "--dry-run", "{b}/typo.yaml"], "model.widht"),
    (["launch", "local", "{b}/evil.yaml"], "evil.yaml"),
    # `data build text` writes 257 ids (256 bytes + EOS); lm_bytes.yaml says 256: one line
    # naming both and the fix (model.lm.vocab_size=0 reads it from the manifest), no IndexError
    (["train", str(REPO / "configs" / "lm_bytes.yaml"), "data.format=wds",
      "data.train_url={b}/text/train", "data.val_url={b}/text/val", "data.seq_len=16",
      "run.dir={b}/lm"], "model.lm.vocab_size=256"),
    (["launch", "local", "--dry-run", RECIPE, "data.train_url={b}/nodata"], "nodata"),
    # 12x12 images into an 8x8 model: one line naming both shapes, not a reshape error
    (["train", RECIPE, "data.format=memory", "data.name=digits_translated", "run.dir={b}/v12",
      "logging.progress_bar=false", "logging.tensorboard=false"], "model.vit.image_size"),
    (["train", str(REPO / "configs" / "dit_digits.yaml"), "data.format=memory",
      "data.name=digits_translated", "run.dir={b}/d12", "logging.progress_bar=false",
      "logging.tensorboard=false"], "model.dit.image_size"),
    (["data", "inspect", "{b}/badtar"], "shard-000000.tar"),
    (["data", "inspect", "{b}/missing"], "missing"),
    (["data", "index", "{b}/badtar"], "shard-000000.tar"),
    (["data", "build", "text", "--format", "wds", "--out", "{b}/o1", "--src", "{b}/no.jsonl"],
     "no.jsonl"),
    (["data", "build", "images", "--format", "wds", "--out", "{b}/o2", "--src", "{b}/nodir"],
     "nodir"),
    (["slurm", "submit", "--dry-run", "{b}/evil.yaml"], "evil.yaml"),
    (["slurm", "sweep", "--dry-run", "{b}/evil.yaml"], "evil.yaml"),
    (["slurm", "sweep", "--dry-run", "{b}/badsweep.yaml"], "badsweep.yaml"),
    (["runs", "status", "{b}/missing"], "missing"),
    (["ckpt", "inspect", "{b}/notckpt"], "notckpt"),
    (["ckpt", "inspect", "{b}/fakedcp"], "fakedcp"),
    (["ckpt", "verify", "{b}/notckpt"], "notckpt"),
    (["ckpt", "inspect", "{b}/fakeds"], "mp_rank_00_model_states.pt"),
    (["ckpt", "export", "{b}/fakeds", "{b}/e2.safetensors"], "mp_rank_00_model_states.pt"),
    (["ckpt", "convert", "--to", "dcp", "{b}/notckpt", "{b}/c1"], "notckpt"),
    (["ckpt", "reshard", "{b}/notckpt", "{b}/r1"], "notckpt"),
    (["ckpt", "export", "{b}/fakedcp", "{b}/e.safetensors"], "fakedcp"),
    (["ckpt", "import", "{b}/garbage.safetensors", "{b}/i1", "--config", RECIPE],
     "garbage.safetensors"),
    (["generate", "{b}/notckpt"], "notckpt"),
    (["mup", "coord-check", "--out", "{b}/m1", "{b}/evil.yaml"], "evil.yaml"),
    (["mup", "transfer", "--out", "{b}/m2", "{b}/typo.yaml"], "model.widht"),
    (["scaling", "plan", "--base", "{b}/evil.yaml", "--budgets", "1e12", "--out", "{b}/s.yaml"],
     "evil.yaml"),
    (["scaling", "run", "{b}/evil.yaml"], "evil.yaml"),
    (["scaling", "collect", "--sweep", "{b}/evil.yaml"], "evil.yaml"),
    (["scaling", "fit", "{b}/runs.csv"], "runs.csv"),
]


@pytest.mark.parametrize("argv, culprit", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit(bad, capsys, monkeypatch, argv, culprit):
    monkeypatch.delenv("PRETRAIN_DEBUG", raising=False)
    # the trainer's logging.basicConfig binds the root handler to the stderr of the test that
    # ran it; each case starts without one, as a fresh process would
    monkeypatch.setattr(logging.root, "handlers", [])
    argv = [a.replace("{b}", str(bad)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)  # a genuine traceback would propagate here and fail the test
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if ": error: " in line]
    assert exit_info.value.code == 2, err
    assert len(errors) == 1 and errors[0].startswith(f"pretrain {argv[0]}"), err
    assert culprit in errors[0], err
    assert not any(line.startswith("Traceback") for line in err), err


def test_console_script_has_no_traceback_unless_debug(bad):
    """The real process: one line on stderr; --debug (or PRETRAIN_DEBUG=1) shows the traceback."""
    argv = [sys.executable, "-m", "pretrain", "data", "index", str(bad / "badtar")]
    out = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 2
    assert [line for line in out.stderr.splitlines() if "error" in line] == [
        "pretrain data index: error: shard 'shard-000000.tar': not a readable tar file at byte "
        "0: truncated header (truncated or corrupt shard)"]
    assert "Traceback" not in out.stderr
    debug = subprocess.run([*argv, "--debug"], cwd=REPO, env=subprocess_env(),
                           capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    env = subprocess_env() | {"PRETRAIN_DEBUG": "1"}
    debug = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


# Commands that printed their own error line (and ignored --debug) before they went through
# the central path; each must now raise its error to it (pretrain/cli/__init__.py).
OWN_PATHS = [
    ["train", "{b}/typo.yaml"],
    ["launch", "local", "--nproc", "0", RECIPE],
    ["generate", "{b}/notckpt"],
    ["ckpt", "verify", "{b}/notckpt"],
    ["mup", "sv-compare", "{b}/missing1", "{b}/missing2"],
    ["scaling", "plan", "--base", "{b}/typo.yaml", "--budgets", "1e12", "--out", "{b}/s.yaml"],
    ["scaling", "run", "{b}/evil.yaml"],
    ["scaling", "collect", "--sweep", "{b}/evil.yaml"],
    ["scaling", "fit", "{b}/runs.csv"],
    ["scaling", "fit-curves", "{b}/runs.csv", "--curves", "{b}/runs.csv"],
    ["scaling", "compare", "{b}/runs.csv", "{b}/runs.csv"],
]


@pytest.mark.parametrize("argv", OWN_PATHS, ids=[" ".join(a[:2]) for a in OWN_PATHS])
def test_every_command_fails_through_the_one_error_path(bad, monkeypatch, argv):
    """With PRETRAIN_DEBUG=1 the central path re-raises the error: a command that printed its
    own line would exit 2 instead, and --debug would not show where it failed."""
    monkeypatch.setenv("PRETRAIN_DEBUG", "1")
    monkeypatch.setattr(logging.root, "handlers", [])
    with pytest.raises(Exception) as raised:  # noqa: PT011 - each command has its own error
        main([a.replace("{b}", str(bad)) for a in argv])
    assert not isinstance(raised.value, SystemExit)


def test_overrides_may_follow_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", RECIPE, "--print-config", "run.name=after_flag", "model.depth=3"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "name: after_flag" in out and "depth: 3" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", RECIPE, "--print-config", "--no-such-flag"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("override, key", [
    ("data.eval_batch_size=-1", "data.eval_batch_size"),
    ("data.val_fraction=1.0", "data.val_fraction"),
    ("data.image_std=[0.5, 0]", "data.image_std"),
    ("optim.lr=0", "optim.lr"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("schedule.warmup_steps=-1", "schedule.warmup_steps"),
    ("schedule.min_lr_ratio=2", "schedule.min_lr_ratio"),
    ("logging.every_steps=0", "logging.every_steps"),
    ("checkpoint.keep_last=-1", "checkpoint.keep_last"),
    ("model.depth=0", "model.depth"),
    ("model.dropout=1", "model.dropout"),
    ("model.vit.patch_size=3", "model.vit.patch_size"),
    ("model.lm.seq_len=0", "model.lm.seq_len"),
    ("model.lm.vocab_size=-1", "model.lm.vocab_size"),
])
def test_range_checks_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(RECIPE, [override])


def test_integral_numbers_are_ints():
    cfg = load_config(RECIPE, ["schedule.steps=1e3", "data.global_batch_size=32.0"])
    assert cfg.schedule.steps == 1000 and cfg.data.global_batch_size == 32
    with pytest.raises(ConfigError, match="schedule.steps"):
        load_config(RECIPE, ["schedule.steps=2.5e0"])
