"""One loss-curve law across model sizes: predict the curve of a size never trained.

The LR-annealing law (curve_laws.py) describes one model under many schedules. Across sizes its
coefficients follow power laws in n = N / N_ref (N_ref: the geometric mean of the fitted
sizes, so the coefficients are those of a typical fitted model):

    L(s, N) = E + B * n^(-beta) + A * n^(-kappa) * S1(s)^(-alpha) - C * n^(-mu) * S2(s)

L0(N) = E + B/N^beta is the Chinchilla-style model term (the loss an infinitely long run would
reach), A*n^-kappa*S1^-alpha the data term and C*n^-mu*S2 the annealing bonus. With `shared`
schedule terms kappa = mu = 0: sizes differ only in L0 (fewer parameters for few sizes).
At a fixed size the law is an LR-annealing law (`at`), so predictions reuse that code.

The fit is curve_fit's (Huber on relative residuals, every run weighs the same, NNLS starts
over a grid of the exponents, L-BFGS-B, a bootstrap over runs); all runs of a held-out size are
scored, not fitted. E and B*n^-beta separate only with three or more fitted sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from pretrain.scaling_laws.bootstrap import single_threaded_blas
from pretrain.scaling_laws.curve_fit import LAM_GRID, fit_over_lams
from pretrain.scaling_laws.curve_laws import CurveData, LRAnnealingLaw
from pretrain.scaling_laws.huber_fit import LawFit
from pretrain.scaling_laws.quality import Estimate, percentile_interval
from pretrain.scaling_laws.schedule_curves import Schedule, ScheduledCurve
from pretrain.scaling_laws.validate import ScalingDataError, huber_delta

_TINY = 1e-12
MIN_SIZES = 3  # fitted sizes needed to separate E from B * n^-beta


@dataclass(frozen=True)
class SizedAnnealingLaw:
    """The law above with its coefficients; `n_ref` in parameters, `lam` the drop momentum."""

    E: float
    B: float
    beta: float
    A: float
    kappa: float
    alpha: float
    C: float
    mu: float
    n_ref: float
    lam: float = 0.999

    def values(self) -> np.ndarray:
        return np.array([self.E, self.B, self.beta, self.A, self.kappa, self.alpha, self.C,
                         self.mu])  # fmt: skip

    def at(self, params: float) -> LRAnnealingLaw:
        """The LR-annealing law of a model of `params` parameters."""
        n = params / self.n_ref
        return LRAnnealingLaw(self.E + self.B * n**-self.beta, self.A * n**-self.kappa,
                              self.alpha, self.C * n**-self.mu, self.lam)  # fmt: skip

    def loss(self, data: CurveData, params: float) -> np.ndarray:
        return self.at(params).loss(data)


@dataclass(frozen=True)
class SizedLawTerms:
    """What curve_fit's search needs of the law (features, prediction and Jacobian, linear
    basis, start grid, bounds). theta = [E, log B, beta, log A, kappa, alpha, log C, mu];
    `shared` pins kappa = mu = 0."""

    shared: bool = False

    def features(self, data: CurveData, lam: float, n: float) -> np.ndarray:
        """Columns [S1, S2, n] at the evaluated steps."""
        F = LRAnnealingLaw.features(data, lam)
        return np.column_stack([F, np.full(len(F), n)])

    @staticmethod
    def predict_jac(theta: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s1, s2, n = F[:, 0], F[:, 1], F[:, 2]
        log_n = np.log(n)
        model = np.exp(theta[1]) * n ** -theta[2]
        data = np.exp(theta[3]) * n ** -theta[4] * s1 ** -theta[5]
        anneal = np.exp(theta[6]) * n ** -theta[7] * s2
        pred = theta[0] + model + data - anneal
        J = np.column_stack([np.ones_like(s1), model, -model * log_n, data, -data * log_n,
                             -data * np.log(s1), -anneal, anneal * log_n])  # fmt: skip
        return pred, J

    def nonlinear_grid(self) -> np.ndarray:
        """Rows [beta, kappa, alpha, mu]."""
        size_exps = (0.0,) if self.shared else (-0.2, 0.0, 0.2, 0.4)
        alphas = LRAnnealingLaw.nonlinear_grid()[:, 0]
        return np.array([[beta, kappa, alpha, mu] for beta in (0.1, 0.2, 0.35, 0.5, 0.8)
                         for kappa in size_exps for alpha in alphas for mu in size_exps])

    @staticmethod
    def basis(nl: np.ndarray, F: np.ndarray) -> np.ndarray:
        """Columns multiplying (E, B, A, C) for fixed exponents (all coefficients >= 0)."""
        s1, s2, n = F[:, 0], F[:, 1], F[:, 2]
        return np.column_stack([np.ones(len(F)), n ** -nl[0], n ** -nl[1] * s1 ** -nl[2],
                                -(n ** -nl[3]) * s2])  # fmt: skip

    @staticmethod
    def theta_of(nl: np.ndarray, coef: np.ndarray) -> np.ndarray:
        e, b, a, c = np.maximum(coef, _TINY)
        return np.array([e, np.log(b), nl[0], np.log(a), nl[1], nl[2], np.log(c), nl[3]])

    def bounds(self) -> list[tuple[float | None, float | None]]:
        size_exp = (0.0, 0.0) if self.shared else (-2.0, 2.0)
        return [(0.0, None), (-30.0, 30.0), (0.0, 3.0), (-30.0, 30.0), size_exp, (0.0, 3.0),
                (-40.0, 10.0), size_exp]  # fmt: skip


@dataclass
class SizedCurveFit(LawFit):
    """The across-sizes law fit on the runs of the fitted sizes; runs of held-out sizes scored."""

    FORMULA: ClassVar[str] = ("L(s, N) = E + B*n^(-beta) + A*n^(-kappa)*S1^(-alpha) "
                              "- C*n^(-mu)*S2, n = N/N_ref")  # fmt: skip
    PARAM_NAMES: ClassVar[list[str]] = ["E", "B", "beta", "A", "kappa", "alpha", "C", "mu"]
    lr_ref: float = 1.0
    shared: bool = False
    fitted_sizes: list[float] = field(default_factory=list)
    held_out_sizes: list[float] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # name, params, held_out, final losses

    def predict(self, lrs: np.ndarray, steps: np.ndarray, params: float,
                law: SizedAnnealingLaw | None = None) -> np.ndarray:  # fmt: skip
        """Loss at `steps` of a model of `params` parameters trained with LRs `lrs`."""
        law = law or self.law
        return law.loss(CurveData(np.asarray(steps, np.int64), np.asarray(lrs) / self.lr_ref),
                        params)  # fmt: skip

    def predict_final(self, schedule: Schedule, params: float) -> Estimate:
        """Final loss of a model of `params` parameters under `schedule`, with the interval."""
        lrs, end = schedule.lrs(), np.array([schedule.cfg.steps])
        return self.interval(lambda law: float(self.predict(lrs, end, params, law)[0]))

    def band(self, lrs: np.ndarray, steps: np.ndarray,
             params: float) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
        """Pointwise interval of the predicted curve over the bootstrap laws."""
        if not self.boot_laws:
            return None
        reps = np.array([self.predict(lrs, steps, params, b) for b in self.boot_laws])
        return percentile_interval(reps, self.level)

    def search_stats(self) -> dict:
        return {"N_ref": self.law.n_ref, "lam": self.law.lam, "lr_ref": self.lr_ref,
                "shared_schedule_terms": self.shared, "fitted_sizes": self.fitted_sizes,
                "held_out_sizes": self.held_out_sizes}  # fmt: skip

    def as_dict(self) -> dict:
        return {**super().as_dict(), "runs": self.runs}


@single_threaded_blas
def fit_across_sizes(
    curves: list[ScheduledCurve],
    *,
    holdout_sizes: list[float] = (),
    shared: bool = False,
    lam: float | None = 0.999,
    delta: float = 1e-3,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    n_jobs: int = 1,
    top_k: int = 4,
) -> SizedCurveFit:
    """Fit the across-sizes law to the curves of every size not in `holdout_sizes` (each a
    model size of the curves, in parameters); score the held-out sizes' runs. lam None: the
    momentum of LAM_GRID with the lowest objective on the fitted runs, as in curve_fit."""
    huber_delta(delta)
    if lam is not None and not 0.0 <= lam < 1.0:
        raise ScalingDataError(f"annealing momentum lam must be in [0, 1), got {lam}")
    sizes = sorted({c.params for c in curves})
    unknown = sorted(set(holdout_sizes) - set(sizes))
    if unknown:
        raise ScalingDataError(f"held-out size(s) {', '.join(f'{n:g}' for n in unknown)} are no "
                               f"run's size (sizes: {', '.join(f'{n:g}' for n in sizes)})")
    fitted = [n for n in sizes if n not in holdout_sizes]
    if len(fitted) < MIN_SIZES:
        raise ScalingDataError(f"a law across sizes needs runs of at least {MIN_SIZES} fitted "
                               f"model sizes, got {len(fitted)}")  # fmt: skip
    holdout = np.array([c.params not in fitted for c in curves])
    n_ref = float(np.exp(np.mean(np.log(fitted))))
    lr_ref = max(float(c.schedule.lrs().max()) for c, h in zip(curves, holdout) if not h)
    terms = SizedLawTerms(shared)
    hfit, lam, feats = fit_over_lams(
        terms,
        lambda m: [terms.features(CurveData(c.steps, c.schedule.lrs() / lr_ref), m,
                                  c.params / n_ref) for c in curves],
        [c.loss for c in curves], holdout, LAM_GRID if lam is None else [lam], delta, top_k,
        n_boot, seed, n_jobs,
    )  # fmt: skip
    best = hfit.best

    def law_of(t: np.ndarray) -> SizedAnnealingLaw:
        return SizedAnnealingLaw(float(t[0]), float(np.exp(t[1])), float(t[2]),
                                 float(np.exp(t[3])), float(t[4]), float(t[5]),
                                 float(np.exp(t[6])), float(t[7]), n_ref, lam)  # fmt: skip

    fit = SizedCurveFit.of(hfit, law_of, delta, level, lr_ref=lr_ref, shared=shared,
                           fitted_sizes=fitted, held_out_sizes=sorted(set(holdout_sizes)))
    for c, f, held in zip(curves, feats, holdout):
        pred = float(terms.predict_jac(best.theta, f)[0][-1])
        final = (fit.predict_final(c.schedule, c.params)
                 if c.steps[-1] == c.schedule.cfg.steps else None)  # fmt: skip
        fit.runs.append({
            "name": c.name, "params": c.params, "schedule": c.schedule.label(),
            "held_out": bool(held), "last_step": int(c.steps[-1]),
            "observed": float(c.loss[-1]), "predicted": pred,
            "rel_error": pred / float(c.loss[-1]) - 1.0,
            "predicted_interval": final.as_dict() if final else None,
        })  # fmt: skip
    return fit
