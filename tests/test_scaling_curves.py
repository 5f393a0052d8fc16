"""Loss-curve laws under LR schedules: recovery of a known law from synthetic curves generated
with the trainer's own schedule code, prediction of a held-out schedule, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pretrain.cli import main
from pretrain.scaling_laws import synthetic as S
from pretrain.scaling_laws.curve_fit import fit_curve_law
from pretrain.scaling_laws.curve_laws import CurveData, LRAnnealingLaw, MultiPowerLaw
from pretrain.scaling_laws.schedule_curves import parse_schedule
from pretrain.scaling_laws.table import CURVE_COLUMNS, RUN_COLUMNS, write_csv
from pretrain.scaling_laws.validate import ScalingDataError
from pretrain.schedule import lr_at
from pretrain.schedule_config import ScheduleConfig

TRUTH = LRAnnealingLaw(L0=2.0, A=3.0, alpha=0.45, C=8e-4, lam=0.999)
CONSTANT = "constant:steps=3000,warmup_steps=50,lr=1e-3"
COSINE = "cosine:steps=2000,warmup_steps=50,lr=1e-3,min_lr_ratio=0.1"
WSD = "wsd:steps=2500,warmup_steps=50,lr=1e-3,decay_fraction=0.2,min_lr_ratio=0"


def curves(law, texts: list[str], noise: float = 0.001, seed: int = 0):
    return S.scheduled_curves(law, [parse_schedule(t) for t in texts], noise=noise, seed=seed)


def test_schedule_lrs_are_the_trainers():
    s = parse_schedule(WSD)
    cfg = ScheduleConfig(name="wsd", steps=2500, warmup_steps=50, decay_fraction=0.2,
                         min_lr_ratio=0.0)  # fmt: skip
    assert s.lrs().tolist() == [lr_at(i, 1e-3, cfg) for i in range(2500)]
    with pytest.raises(ScalingDataError, match="'speed=3' is not key=value"):
        parse_schedule("wsd:steps=10,speed=3")
    with pytest.raises(ScalingDataError, match="name 'linear' is not one of"):
        parse_schedule("linear:steps=10")


def test_annealing_areas_by_hand():
    """S1 sums the LRs used; S2 sums the momentum of drops (warmup rises do not count)."""
    lrs = np.array([0.5, 1.0, 1.0, 0.6, 0.6, 0.2])
    F = LRAnnealingLaw.features(CurveData(np.array([1, 3, 6]), lrs), lam=0.5)
    np.testing.assert_allclose(F[:, 0], [0.5, 2.5, 3.9])
    m = [0, 0, 0, 0.4, 0.2, 0.1 + 0.4]  # m_i = 0.5 m_{i-1} + drop_i
    np.testing.assert_allclose(F[:, 1], [0, 0, sum(m[:6])])


def test_lr_annealing_fit_recovers_the_law_and_predicts_a_held_out_schedule():
    """Fit on constant + cosine, WSD held out. Tolerances: L0 within 1 %, A and alpha within
    5 %, C within 5 %; the held-out WSD final loss within 1 % (noise sd 0.1 % per eval)."""
    got = curves(TRUTH, [CONSTANT, COSINE, WSD])
    fit = fit_curve_law(got, "lr_annealing", holdout=np.array([False, False, True]))
    p = {k: v.value for k, v in fit.params.items()}
    assert p["L0"] == pytest.approx(TRUTH.L0, rel=0.01)
    assert p["A"] == pytest.approx(TRUTH.A, rel=0.05)
    assert p["alpha"] == pytest.approx(TRUTH.alpha, rel=0.05)
    assert p["C"] == pytest.approx(TRUTH.C, rel=0.05)
    held = next(r for r in fit.runs if r["held_out"])
    assert abs(held["rel_error"]) < 0.01
    truth_final = TRUTH.loss(CurveData(np.array([2500]), parse_schedule(WSD).lrs() / 1e-3))[0]
    assert fit.predict_final(parse_schedule(WSD)).value == pytest.approx(truth_final, rel=0.01)
    assert fit.holdout_quality is not None and fit.holdout_quality.max_abs_log < 0.01


def test_bootstrap_over_runs_gives_intervals_around_the_estimate():
    more = [CONSTANT, COSINE, WSD, WSD.replace("0.2", "0.4").replace("2500", "1500")]
    fit = fit_curve_law(curves(TRUTH, more, noise=0.003, seed=1), "lr_annealing",
                        n_boot=24, seed=0)  # fmt: skip
    assert len(fit.boot_laws) + fit.n_boot_failed == 24 and len(fit.boot_laws) >= 18
    for name, est in fit.params.items():
        assert est.lo <= est.value <= est.hi, name
    final = fit.predict_final(parse_schedule(COSINE))
    assert final.lo < final.hi and final.lo <= final.value <= final.hi


def test_multi_power_fit_predicts_a_held_out_schedule():
    truth = MultiPowerLaw(L0=2.0, A=3.0, alpha=0.45, B=0.6, C=0.05, beta=0.6, gamma=0.5)
    short = [t.replace("steps=3000", "steps=600").replace("steps=2000", "steps=500")
             .replace("steps=2500", "steps=700").replace("warmup_steps=50", "warmup_steps=10")
             for t in (CONSTANT, COSINE, WSD)]  # fmt: skip
    fit = fit_curve_law(curves(truth, short, noise=0.0005), "multi_power",
                        holdout=np.array([False, False, True]))  # fmt: skip
    held = next(r for r in fit.runs if r["held_out"])
    assert abs(held["rel_error"]) < 0.01
    assert all(abs(r["rel_error"]) < 0.005 for r in fit.runs if not r["held_out"])


def test_cli_fit_curves_writes_fits_report_and_figure(tmp_path: Path, capsys):
    runs, points = S.scheduled_rows(curves(TRUTH, [CONSTANT, COSINE, WSD]))
    write_csv(tmp_path / "runs.csv", runs, RUN_COLUMNS)
    write_csv(tmp_path / "curves.csv", points, CURVE_COLUMNS)
    out = tmp_path / "fit"
    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit-curves", str(tmp_path / "runs.csv"), "--curves",
              str(tmp_path / "curves.csv"), "-o", str(out), "--law", "lr_annealing",
              "--holdout", "wsd2", "--boot", "8", "--jobs", "1",
              "--predict", "wsd:steps=4000,warmup_steps=50,lr=1e-3,decay_fraction=0.1"],
             )  # fmt: skip
    assert e.value.code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "wsd2 (held out)" in text and "predicted wsd 4000 steps" in text
    doc = json.loads((out / "curve_fits.json").read_text())
    held = next(r for r in doc[0]["fits"]["lr_annealing"]["runs"] if r["held_out"])
    assert abs(held["rel_error"]) < 0.01
    assert (out / "curve_fits.png").stat().st_size > 10_000
    assert "held out" in (out / "curve_report.md").read_text()


def test_cli_fit_curves_names_a_run_without_a_schedule(tmp_path: Path, capsys):
    runs, points = S.scheduled_rows(curves(TRUTH, [CONSTANT, COSINE]))
    runs[1]["schedule"] = ""
    write_csv(tmp_path / "runs.csv", runs, RUN_COLUMNS)
    write_csv(tmp_path / "curves.csv", points, CURVE_COLUMNS)
    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit-curves", str(tmp_path / "runs.csv"), "--curves",
              str(tmp_path / "curves.csv"), "-o", str(tmp_path / "o")])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run 'cosine1' has no 'schedule' column" in err[0]


def test_momentum_is_picked_by_the_fit_on_fitted_runs_only():
    """Short runs whose drops act within ~50 steps (lam 0.98): lam=None finds it from the
    fitted runs, and the held-out WSD final loss is then within 1 %."""
    truth = LRAnnealingLaw(L0=2.0, A=3.0, alpha=0.45, C=2e-3, lam=0.98)
    short = [t.replace("steps=3000", "steps=400").replace("steps=2000", "steps=400")
             .replace("steps=2500", "steps=400").replace("warmup_steps=50", "warmup_steps=20")
             for t in (CONSTANT, COSINE, WSD)]  # fmt: skip
    got = curves(truth, short, noise=0.001)
    fit = fit_curve_law(got, "lr_annealing", lam=None, holdout=np.array([False, False, True]))
    assert fit.law.lam == 0.98
    assert abs(next(r for r in fit.runs if r["held_out"])["rel_error"]) < 0.01
    fixed = fit_curve_law(got, "lr_annealing", lam=0.999, holdout=np.array([False, False, True]))
    assert fixed.objective > fit.objective
