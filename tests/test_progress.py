"""Progress output suits where it goes; a warning repeated every step is shown once
(pretrain/progress.py)."""

from __future__ import annotations

import io
import subprocess
import sys

from pretrain.metrics import MetricsLogger
from tests.conftest import REPO, subprocess_env


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_into_a_file_a_line_every_log_step_and_no_redraws(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, True, False, True, total_steps=23, start_step=0,
                           every_steps=5)
    for step in range(1, 24):
        logger.progress(step, 2.5, 1e-3)
    logger.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split()[2] for line in err.splitlines()] == [
        "5/23", "10/23", "15/23", "20/23", "23/23"]
    assert err.splitlines()[0] == "[pretrain] step 5/23 loss=2.5000 lr=1.00e-03"


def test_on_a_terminal_a_bar(tmp_path):
    from pretrain.progress import ProgressBar, make_progress

    terminal = Terminal()
    bar = make_progress(10, 0, 5, terminal)
    assert isinstance(bar, ProgressBar)
    bar.update(3, 2.0, 1e-3)
    bar.close()
    assert "\r" in terminal.getvalue() and "3/10" in terminal.getvalue()


def test_a_warning_repeated_every_step_is_shown_once():
    code = """
import warnings
from pretrain.progress import show_each_warning_once
show_each_warning_once()
warnings.simplefilter("always")  # what some libraries do
for step in range(5):
    warnings.warn("torch.foo is deprecated", FutureWarning)
    warnings.warn(f"step {step} differs", UserWarning)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stderr.splitlines() if "Warning:" in line]
    assert sum("deprecated" in line for line in lines) == 1, out.stderr
    assert sum("differs" in line for line in lines) == 5, out.stderr
