"""Loss-curve laws under a learning-rate schedule: the loss after s steps from the LRs used.

Both laws read a run's whole LR sequence (eta_0, eta_1, ...: the LR of optimizer step i, in
units of a reference LR so the areas count steps) and give the loss at each evaluated step s
(s steps done, LRs eta_0..eta_{s-1} used). Only LR *drops* anneal: warmup's rises are not
counted as negative annealing.

LR-annealing law (Tissue et al. 2024, "Scaling Law with Learning Rate Annealing"):

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)
    S1(s) = sum_{i<s} eta_i                          forward area
    S2(s) = sum_{1<=i<s} m_i,  m_i = lam * m_{i-1} + max(eta_{i-1} - eta_i, 0)
                                                     annealing area, drops with momentum lam

Multi-power law (Luo et al. 2025, "A Multi-Power Law for Loss Curve Prediction Across Learning
Rate Schedules"):

    L(s) = L0 + A * S1(s)^(-alpha) - B * sum_{1<=k<s} d_k * G(eta_k^(-gamma) * S_k(s))
    d_k = max(eta_{k-1} - eta_k, 0),  S_k(s) = sum_{k<=t<s} eta_t,  G(x) = 1 - (C*x + 1)^(-beta)

Each law is linear in some parameters given the others (L0, A, C; or L0, A, B): `basis` returns
those columns, so a grid over the non-linear ones seeds the fit with least-squares solutions.
`predict_jac` returns the prediction and its Jacobian in the fit's parameter vector theta, whose
scale parameters are logs (positive by construction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.signal import lfilter

_TINY = 1e-12


def drops(lrs: np.ndarray) -> np.ndarray:
    """d_i = max(eta_{i-1} - eta_i, 0) for i >= 1 (d_0 = 0): how much the LR fell at step i."""
    d = np.zeros(len(lrs))
    d[1:] = np.maximum(lrs[:-1] - lrs[1:], 0.0)
    return d


def forward_area(lrs: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """S1(s) = sum_{i<s} eta_i at each evaluated step s."""
    prefix = np.concatenate([[0.0], np.cumsum(lrs)])
    return prefix[steps]


def annealing_area(lrs: np.ndarray, steps: np.ndarray, lam: float) -> np.ndarray:
    """S2(s): the sum over steps i < s of the momentum m_i of LR drops (decay factor lam)."""
    m = lfilter([1.0], [1.0, -lam], drops(lrs))
    prefix = np.concatenate([[0.0], np.cumsum(m)])
    return prefix[steps]


@dataclass(frozen=True)
class CurveData:
    """What a law needs of one run: its evaluated steps and the LRs it used (eta units)."""

    steps: np.ndarray  # int, each in [1, len(lrs)]
    lrs: np.ndarray


@dataclass(frozen=True)
class LRAnnealingLaw:
    """L(s) = L0 + A * S1^(-alpha) - C * S2 (momentum lam of LR drops; a fixed choice)."""

    NAME: ClassVar[str] = "lr_annealing"
    FORMULA: ClassVar[str] = "L(s) = L0 + A*S1^(-alpha) - C*S2 (Tissue et al. 2024)"
    PARAM_NAMES: ClassVar[list[str]] = ["L0", "A", "alpha", "C"]
    LINEAR: ClassVar[list[str]] = ["L0", "A", "C"]
    NONLINEAR: ClassVar[list[str]] = ["alpha"]

    L0: float
    A: float
    alpha: float
    C: float
    lam: float = 0.999

    def values(self) -> np.ndarray:
        return np.array([self.L0, self.A, self.alpha, self.C])

    # theta = [L0, log A, alpha, log C]
    @classmethod
    def from_theta(cls, theta: np.ndarray, lam: float = 0.999) -> LRAnnealingLaw:
        return cls(float(theta[0]), float(np.exp(theta[1])), float(theta[2]),
                   float(np.exp(theta[3])), lam)  # fmt: skip

    @staticmethod
    def bounds() -> list[tuple[float | None, float | None]]:
        return [(0.0, None), (-30.0, 30.0), (0.0, 3.0), (-40.0, 10.0)]

    @staticmethod
    def features(data: CurveData, lam: float) -> np.ndarray:
        """Columns [S1, S2] at the evaluated steps."""
        s1 = forward_area(data.lrs, data.steps)
        return np.column_stack([s1, annealing_area(data.lrs, data.steps, lam)])

    @staticmethod
    def predict_jac(theta: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s1, s2 = F[:, 0], F[:, 1]
        a, c = np.exp(theta[1]), np.exp(theta[3])
        power = s1 ** -theta[2]
        pred = theta[0] + a * power - c * s2
        J = np.column_stack([np.ones_like(s1), a * power, -a * power * np.log(s1), -c * s2])
        return pred, J

    @staticmethod
    def nonlinear_grid() -> np.ndarray:
        return np.array([[x] for x in (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3)])

    @staticmethod
    def basis(nonlinear: np.ndarray, F: np.ndarray) -> np.ndarray:
        """Columns multiplying (L0, A, C) for fixed alpha (all coefficients >= 0)."""
        return np.column_stack([np.ones(len(F)), F[:, 0] ** -nonlinear[0], -F[:, 1]])

    @staticmethod
    def theta_of(nonlinear: np.ndarray, coef: np.ndarray) -> np.ndarray:
        l0, a, c = np.maximum(coef, _TINY)
        return np.array([l0, np.log(a), nonlinear[0], np.log(c)])

    def loss(self, data: CurveData) -> np.ndarray:
        theta = np.array([self.L0, np.log(self.A), self.alpha, np.log(max(self.C, _TINY))])
        return self.predict_jac(theta, self.features(data, self.lam))[0]


@dataclass(frozen=True)
class _Drops:
    """The multi-power law's annealing sum as flat (eval, drop) pairs, drop before eval only."""

    n_evals: int
    row: np.ndarray  # which evaluation each pair belongs to
    d: np.ndarray  # drop size
    log_eta: np.ndarray  # log of the LR right after the drop
    area: np.ndarray  # S_k(s): LR area from the drop to the evaluated step


@dataclass(frozen=True)
class MultiPowerLaw:
    """L(s) = L0 + A*S1^(-alpha) - B * sum_k d_k * (1 - (C * eta_k^-gamma * S_k(s) + 1)^-beta)."""

    NAME: ClassVar[str] = "multi_power"
    FORMULA: ClassVar[str] = (
        "L(s) = L0 + A*S1^(-alpha) - B*sum_k d_k*(1 - (C*eta_k^(-gamma)*S_k(s) + 1)^(-beta)) "
        "(Luo et al. 2025)"
    )
    PARAM_NAMES: ClassVar[list[str]] = ["L0", "A", "alpha", "B", "C", "beta", "gamma"]
    LINEAR: ClassVar[list[str]] = ["L0", "A", "B"]
    NONLINEAR: ClassVar[list[str]] = ["alpha", "C", "beta", "gamma"]

    L0: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float
    lam: float = 0.0  # unused; keeps one constructor signature for both laws

    def values(self) -> np.ndarray:
        return np.array([self.L0, self.A, self.alpha, self.B, self.C, self.beta, self.gamma])

    # theta = [L0, log A, alpha, log B, log C, beta, gamma]
    @classmethod
    def from_theta(cls, theta: np.ndarray, lam: float = 0.0) -> MultiPowerLaw:
        t = [float(x) for x in theta]
        return cls(t[0], np.exp(t[1]), t[2], np.exp(t[3]), np.exp(t[4]), t[5], t[6], lam)

    @staticmethod
    def bounds() -> list[tuple[float | None, float | None]]:
        return [(0.0, None), (-30.0, 30.0), (0.0, 3.0), (-30.0, 30.0), (-20.0, 10.0),
                (0.01, 5.0), (0.0, 2.0)]  # fmt: skip

    @staticmethod
    def features(data: CurveData, lam: float = 0.0) -> tuple[np.ndarray, _Drops]:
        """S1 at the evaluated steps and the (eval, earlier drop) pairs."""
        d_all = drops(data.lrs)
        k = np.flatnonzero(d_all > 0)
        prefix = np.concatenate([[0.0], np.cumsum(data.lrs)])
        steps = np.asarray(data.steps)
        row, col = np.nonzero(k[None, :] < steps[:, None])  # drop k before eval s (k <= s-1)
        kk = k[col]
        area = prefix[steps[row]] - prefix[kk]
        log_eta = np.log(np.maximum(data.lrs[kk], _TINY))
        return prefix[steps], _Drops(len(steps), row, d_all[kk], log_eta, area)

    @staticmethod
    def _annealing(nl: np.ndarray, dr: _Drops) -> tuple[np.ndarray, ...]:
        """sum_k d_k G_k per evaluation and its derivatives in (log C, beta, gamma)."""
        c, beta, gamma = np.exp(nl[0]), nl[1], nl[2]
        cx = c * np.exp(-gamma * dr.log_eta) * dr.area
        log_u = np.log1p(cx)
        u_b = np.exp(-beta * log_u)  # (1 + C x)^-beta
        dg = dr.d * beta * u_b * cx / (1.0 + cx)  # d_k * dG/dlog C

        def per_eval(values: np.ndarray) -> np.ndarray:
            return np.bincount(dr.row, weights=values, minlength=dr.n_evals)

        return (per_eval(dr.d * (1.0 - u_b)), per_eval(dg), per_eval(dr.d * u_b * log_u),
                per_eval(-dg * dr.log_eta))  # fmt: skip

    @classmethod
    def predict_jac(cls, theta: np.ndarray, F) -> tuple[np.ndarray, np.ndarray]:
        s1, dr = F
        a, b = np.exp(theta[1]), np.exp(theta[3])
        power = s1 ** -theta[2]
        ld, d_logc, d_beta, d_gamma = cls._annealing(theta[4:], dr)
        pred = theta[0] + a * power - b * ld
        J = np.column_stack([np.ones_like(s1), a * power, -a * power * np.log(s1), -b * ld,
                             -b * d_logc, -b * d_beta, -b * d_gamma])  # fmt: skip
        return pred, J

    @staticmethod
    def nonlinear_grid() -> np.ndarray:
        """Rows [alpha, log C, beta, gamma]; C spans the 1/steps scales of a drop's effect."""
        rows = [
            [alpha, np.log(c), beta, gamma]
            for alpha in (0.1, 0.3, 0.6, 1.0)
            for c in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
            for beta in (0.3, 0.6, 1.0)
            for gamma in (0.3, 0.6)
        ]
        return np.array(rows)

    @classmethod
    def basis(cls, nonlinear: np.ndarray, F) -> np.ndarray:
        s1, dr = F
        ld = cls._annealing(np.asarray(nonlinear[1:]), dr)[0]
        return np.column_stack([np.ones(len(s1)), s1 ** -nonlinear[0], -ld])

    @staticmethod
    def theta_of(nonlinear: np.ndarray, coef: np.ndarray) -> np.ndarray:
        l0, a, b = np.maximum(coef, _TINY)
        return np.array([l0, np.log(a), nonlinear[0], np.log(b), *nonlinear[1:]])

    def loss(self, data: CurveData) -> np.ndarray:
        theta = np.array([self.L0, np.log(self.A), self.alpha, np.log(max(self.B, _TINY)),
                          np.log(self.C), self.beta, self.gamma])  # fmt: skip
        return self.predict_jac(theta, self.features(data))[0]


LAWS = {LRAnnealingLaw.NAME: LRAnnealingLaw, MultiPowerLaw.NAME: MultiPowerLaw}
