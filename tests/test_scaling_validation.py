"""Bad input fails early with a message that names the column, the run and the reason."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.scaling_laws import synthetic as S
from pretrain.scaling_laws.compute_law import fit_compute_law
from pretrain.scaling_laws.envelope import Curve
from pretrain.scaling_laws.isoflop import fit_isoflop
from pretrain.scaling_laws.parametric import fit_parametric
from pretrain.scaling_laws.validate import ScalingDataError


@pytest.fixture
def runs():
    return S.isoflop_runs(budgets=(1e18, 1e19, 1e20), points=5, noise=0.01)


def names(n):
    return [f"run{i}" for i in range(n)]


def test_nan_loss_names_the_run(runs):
    L = runs.L.copy()
    L[3] = np.nan
    with pytest.raises(ScalingDataError, match=r"loss of run 'run3' is nan"):
        fit_parametric(runs.N, runs.D, L, names=names(len(L)))


def test_non_positive_names_the_column_and_run(runs):
    D = runs.D.copy()
    D[5] = 0
    with pytest.raises(ScalingDataError, match=r"tokens D of run 'run5' is 0; .*positive"):
        fit_parametric(runs.N, D, runs.L, names=names(len(D)))
    C = runs.C.copy()
    C[0] = -1
    with pytest.raises(ScalingDataError, match=r"compute C of index 0 is -1"):
        fit_compute_law(C, runs.L)


def test_too_few_points():
    with pytest.raises(ScalingDataError, match=r"L\(N, D\) fit: 4 point\(s\) cannot constrain 5"):
        fit_parametric([1e6, 2e6, 3e6, 4e6], [1e9, 3e9, 2e9, 1e9], [3.0, 2.9, 2.8, 2.7])
    with pytest.raises(ScalingDataError, match="need at least 4"):
        fit_compute_law([1e10, 1e11, 1e12], [3.0, 2.5, 2.2])


def test_degenerate_grids(runs):
    # one model size: alpha is not identifiable
    with pytest.raises(ScalingDataError, match="params N takes 1 distinct"):
        fit_parametric(np.full(10, 1e8), np.geomspace(1e9, 1e11, 10), np.linspace(3, 2, 10))
    # constant tokens-per-parameter: the N and D terms are collinear
    N = np.geomspace(1e7, 1e9, 10)
    with pytest.raises(ScalingDataError, match="same tokens-per-parameter"):
        fit_parametric(N, 20 * N, np.linspace(3, 2, 10))
    # IsoFLOP budget with fewer than three model sizes
    keep = ~((runs.C == 1e19) & (runs.N >= np.median(runs.N[runs.C == 1e19])))
    with pytest.raises(ScalingDataError, match=r"C=1e\+19: params N takes 2 distinct"):
        fit_isoflop(runs.N[keep], runs.D[keep], runs.C[keep], runs.L[keep])


def test_mismatched_lengths_and_bad_curve(runs):
    with pytest.raises(ScalingDataError, match=r"columns differ in length: N=15, D=14"):
        fit_parametric(runs.N, runs.D[:-1], runs.L)
    with pytest.raises(ScalingDataError, match="flops of run 'x' are not strictly increasing"):
        Curve("x", 1e6, np.array([1.0, 3.0, 2.0]), np.ones(3), np.ones(3))
    with pytest.raises(ScalingDataError, match="huber delta must be positive"):
        fit_parametric(runs.N, runs.D, runs.L, delta=0)
