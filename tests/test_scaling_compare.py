"""`pretrain scaling compare`: two studies drawn from known laws whose compute-optimal
frontiers cross; the comparison finds the crossing and the right winner on either side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq

from pretrain.cli import main
from pretrain.scaling_laws import synthetic as S
from pretrain.scaling_laws.parametric import ParametricLaw
from pretrain.scaling_laws.table import RUN_COLUMNS, write_csv

# B: lower irreducible loss, larger reducible terms: worse at small compute, better at large
LAW_B = ParametricLaw(E=1.55, A=406.4 * 1.15, B=410.7 * 1.15, alpha=0.34, beta=0.28)
BUDGETS = tuple(np.geomspace(1e17, 1e22, 11))


def optimal_loss(law: ParametricLaw, C: float) -> float:
    return float(law.loss(*law.compute_optimal(C)))


def write_study(path: Path, law: ParametricLaw, seed: int) -> Path:
    runs = S.isoflop_runs(law, budgets=BUDGETS, points=7, spread=20, noise=0.003, seed=seed)
    write_csv(path, S.as_rows(runs), RUN_COLUMNS)
    return path


def test_compare_finds_the_crossing_and_the_winner_on_each_side(tmp_path: Path, capsys):
    a = write_study(tmp_path / "a.csv", S.CHINCHILLA, seed=1)
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    write_study(b_dir / "runs.csv", LAW_B, seed=2)
    truth = np.exp(brentq(lambda x: optimal_loss(S.CHINCHILLA, np.exp(x))
                          - optimal_loss(LAW_B, np.exp(x)), np.log(1e18), np.log(1e22)))
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as e:
        main(["scaling", "compare", str(a), str(b_dir), "--names", "chinchilla", "steeper",
              "--target", "3e17", "1e22", "--boot", "100", "--jobs", "1", "-o", str(out)])
    assert e.value.code == 0, capsys.readouterr().err
    assert "frontiers cross at C" in capsys.readouterr().out
    doc = json.loads((out / "compare.json").read_text())
    (cross,) = [c for c in doc["crossings"] if 1e17 <= c["value"] <= 1e22]  # sampled range
    assert truth / 3 < cross["value"] < truth * 3, (cross, truth)
    assert cross["lo"] < cross["value"] < cross["hi"]
    low, high = doc["targets"]
    assert low["p_a_better"] > 0.95 and high["p_a_better"] < 0.05
    assert (out / "compare.png").stat().st_size > 10_000


def test_compare_names_a_bad_study(tmp_path: Path, capsys):
    a = write_study(tmp_path / "a.csv", S.CHINCHILLA, seed=1)
    with pytest.raises(SystemExit) as e:
        main(["scaling", "compare", str(a), str(tmp_path / "missing.csv"), "-o",
              str(tmp_path / "o")])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.csv: no such file" in err[0]
