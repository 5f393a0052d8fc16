"""Report diagnostics: residuals by budget and size, and leave-one-budget-out error, show a
study whose largest budget the law does not describe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pretrain.scaling_laws import synthetic as S
from pretrain.scaling_laws.analysis import Options, analyze
from pretrain.scaling_laws.diagnostics import diagnose
from pretrain.scaling_laws.study import fit_and_report
from pretrain.scaling_laws.table import RunTable

BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)


def table(shift_largest: float = 0.0) -> RunTable:
    runs = S.isoflop_runs(budgets=BUDGETS, points=6, noise=0.003, seed=3)
    rows = S.as_rows(runs)
    for row in rows:
        if row["flops"] == BUDGETS[-1]:
            row["loss"] *= np.exp(shift_largest)  # e.g. a regression in the largest runs
    return RunTable(rows)


def test_clean_study_extrapolates_and_a_shifted_budget_stands_out():
    opts = Options(n_boot=0, n_jobs=1)
    clean = diagnose(analyze(table(), None, opts))
    assert [g.n for g in clean.by_budget] == [6] * 5 and len(clean.by_size) == 30
    assert len(clean.leave_one_budget_out) == 5
    assert max(g.rmse for g in clean.leave_one_budget_out) < 0.02

    bad = diagnose(analyze(table(shift_largest=0.08), None, opts))
    largest = bad.leave_one_budget_out[-1]
    assert largest.budget == pytest.approx(BUDGETS[-1]) and largest.rmse > 0.05
    assert abs(bad.by_budget[-1].mean) > 2 * abs(clean.by_budget[-1].mean)


def test_report_and_fits_carry_the_diagnostics(tmp_path: Path):
    fit_and_report(table(), None, Options(n_boot=0, n_jobs=1), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "Residuals by budget" in report and "Leave one budget out" in report
    doc = json.loads((tmp_path / "fits.json").read_text())
    assert len(doc["diagnostics"]["leave_one_budget_out"]) == 5
