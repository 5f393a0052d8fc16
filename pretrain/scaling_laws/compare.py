"""`pretrain scaling compare`: two studies (model families, datasets, recipes) compared by their
compute frontiers, not at one size (Nezhurina et al., "Scaling Laws for Robust Comparison of
Open Foundation Language-Vision Models").

Each study's frontier L(C) = E + A*C^-alpha is fit (compute_law.py, bootstrap included) to the
Pareto frontier of its final losses. Reported: where the two frontiers cross (each crossing with
the percentile interval of the crossing nearest it over bootstrap pairs, and how often a pair
crosses at all), and at each target compute the predicted losses and the probability that A
beats B: the share of bootstrap pairs (the i-th refit of A with the i-th of B; the resamples are
independent) in which A's loss is lower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import brentq

from pretrain.scaling_laws.compute_law import ComputeLaw, ComputeLawFit, fit_compute_law
from pretrain.scaling_laws.envelope import pareto_frontier
from pretrain.scaling_laws.quality import Estimate, with_interval
from pretrain.scaling_laws.table import RunTable

_SEARCH_DECADES = 3.0  # look for crossings this many decades beyond the sampled compute


@dataclass
class Study:
    name: str
    C: np.ndarray  # every run's compute and final loss
    L: np.ndarray
    frontier: np.ndarray  # indices of the Pareto frontier
    fit: ComputeLawFit


@dataclass
class Comparison:
    a: Study
    b: Study
    search: tuple[float, float]  # compute range searched for crossings
    crossings: list[Estimate] = field(default_factory=list)
    crossing_share: float = 0.0  # share of bootstrap pairs whose frontiers cross in `search`
    targets: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "a": {"name": self.a.name, "fit": self.a.fit.as_dict()},
            "b": {"name": self.b.name, "fit": self.b.fit.as_dict()},
            "search": list(self.search),
            "crossings": [c.as_dict() for c in self.crossings],
            "crossing_share": self.crossing_share,
            "targets": [{k: (v.as_dict() if isinstance(v, Estimate) else v)
                         for k, v in t.items()} for t in self.targets],  # fmt: skip
        }


def crossings(a: ComputeLaw, b: ComputeLaw, lo: float, hi: float, n: int = 400) -> list[float]:
    """Computes in [lo, hi] where L_a(C) = L_b(C): sign changes on a log grid, refined."""
    x = np.linspace(np.log(lo), np.log(hi), n)
    diff = np.log(a.loss(np.exp(x))) - np.log(b.loss(np.exp(x)))
    out = []
    for i in np.flatnonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0):
        root = brentq(lambda t: np.log(a.loss(np.exp(t)) / b.loss(np.exp(t))), x[i], x[i + 1])
        out.append(float(np.exp(root)))
    return out


def fit_study(name: str, table: RunTable, **fit_kwargs) -> Study:
    C, L = table.column("flops"), table.column("loss")
    idx = pareto_frontier(C, L)
    return Study(name, C, L, idx, fit_compute_law(C[idx], L[idx], **fit_kwargs))


def compare_studies(a: Study, b: Study, targets: list[float]) -> Comparison:
    lo = min(a.C.min(), b.C.min()) / 10**_SEARCH_DECADES
    hi = max(a.C.max(), b.C.max(), *targets) * 10**_SEARCH_DECADES
    pairs = list(zip(a.fit.boot_laws, b.fit.boot_laws))
    level = a.fit.level
    comp = Comparison(a, b, (float(lo), float(hi)))
    found = [crossings(la, lb, lo, hi) for la, lb in pairs]
    comp.crossing_share = float(np.mean([bool(f) for f in found])) if pairs else float("nan")
    for c in crossings(a.fit.law, b.fit.law, lo, hi):
        nearest = [min(f, key=lambda x: abs(np.log(x / c))) for f in found if f]
        comp.crossings.append(with_interval(c, nearest, level))
    for C in targets:
        wins = [la.loss(C) < lb.loss(C) for la, lb in pairs]
        comp.targets.append({
            "C": float(C), "loss_a": a.fit.predict_loss(C), "loss_b": b.fit.predict_loss(C),
            "p_a_better": float(np.mean(wins)) if wins else float("nan"),
        })  # fmt: skip
    return comp


def plot_comparison(comp: Comparison, path: Path) -> None:
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    C_all = np.concatenate([comp.a.C, comp.b.C])
    hi = max(C_all.max(), *(t["C"] for t in comp.targets)) * 1.5
    Cx = np.geomspace(C_all.min() / 1.5, hi, 300)
    for study, color in ((comp.a, "tab:blue"), (comp.b, "tab:orange")):
        ax.scatter(study.C, study.L, s=12, color=color, alpha=0.35, lw=0)
        ax.scatter(study.C[study.frontier], study.L[study.frontier], s=24, color=color,
                   edgecolors="k", linewidths=0.4, zorder=3)  # fmt: skip
        law = study.fit.law
        ax.plot(Cx, law.loss(Cx), color=color, lw=1.6,
                label=f"{study.name}: {law.E:.3g} + {law.A:.3g}·C^-{law.alpha:.3f}")  # fmt: skip
        if study.fit.boot_laws:
            lo, hi_band = study.fit.band(Cx)
            ax.fill_between(Cx, lo, hi_band, color=color, alpha=0.15, lw=0)
    for c in comp.crossings:
        ax.axvline(c.value, color="k", ls="--", lw=1)
        if np.isfinite(c.lo):
            ax.axvspan(c.lo, c.hi, color="k", alpha=0.06, lw=0)
    ax.plot([], [], "k--", lw=1, label="frontiers cross")
    for t in comp.targets:
        ax.axvline(t["C"], color="tab:red", ls=":", lw=1.2)
        ax.annotate(f"P(A better) = {t['p_a_better']:.2f}", (t["C"], 0.98), rotation=90,
                    xycoords=("data", "axes fraction"), ha="right", va="top",
                    fontsize=7.5)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("final loss")
    ax.set_title(f"Compute frontiers: A = {comp.a.name} vs B = {comp.b.name} "
                 f"({comp.a.fit.level:.0%} bands)", fontsize=10)  # fmt: skip
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5)
    fig.savefig(path, dpi=130)


def summary(comp: Comparison) -> list[str]:
    lines = [f"{s.name}: L(C) = {s.fit.params['E']} + {s.fit.params['A']}·C^-"
             f"{s.fit.params['alpha']} ({len(s.frontier)} frontier runs)"
             for s in (comp.a, comp.b)]  # fmt: skip
    if comp.crossings:
        lines += [f"frontiers cross at C = {c}" for c in comp.crossings]
    else:
        lines.append(f"frontiers do not cross in C = [{comp.search[0]:.3g}, {comp.search[1]:.3g}]")
    lines.append(f"bootstrap pairs that cross in that range: {comp.crossing_share:.0%}")
    lines += [f"C = {t['C']:.3g}: A {t['loss_a']}, B {t['loss_b']}, "
              f"P(A beats B) = {t['p_a_better']:.3f}" for t in comp.targets]  # fmt: skip
    return lines
