"""PNG figures of a study: loss vs compute with the frontier, IsoFLOP profiles with their
minima, and compute-optimal N and D against compute with intervals.

Figures are drawn on `matplotlib.figure.Figure` (the Agg canvas), never through pyplot, so
plotting works headless and leaves no global state behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from pretrain.scaling_laws.analysis import Analysis
from pretrain.scaling_laws.isoflop import IsoFLOPProfile, fit_profile
from pretrain.scaling_laws.validate import ScalingDataError

COLORS = {"approach1": "tab:green", "approach2": "tab:blue", "approach3": "tab:orange"}


def _compute_axis(a: Analysis, pad: float = 1.3) -> np.ndarray:
    hi = max([a.C.max(), *a.options.targets]) * pad
    return np.geomspace(a.C.min() / pad, hi, 200)


def _percentiles(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = 50 * (1 - level)
    lo, hi = np.nanpercentile(reps, [tail, 100 - tail], axis=0)
    return lo, hi


def _approach3_optimal(a: Analysis, C: np.ndarray) -> dict[str, tuple]:
    """N_opt, D_opt and optimal loss along C, each as (value, lo, hi)."""
    p = a.parametric
    assert p is not None
    n, d = p.law.compute_optimal(C, a.k_flops)
    out = {"N": (n,), "D": (d,), "L": (p.law.loss(n, d),)}
    if p.boot_laws:
        reps = [b.compute_optimal(C, a.k_flops) for b in p.boot_laws]
        rn, rd = np.array([r[0] for r in reps]), np.array([r[1] for r in reps])
        out["N"] += _percentiles(rn, p.level)
        out["D"] += _percentiles(rd, p.level)
        rl = np.array([b.loss(x, y) for b, x, y in zip(p.boot_laws, rn, rd)])
        out["L"] += _percentiles(rl, p.level)
    return out


def plot_loss_vs_compute(a: Analysis, path: Path) -> None:
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    for c in a.curves:
        ax.plot(c.flops, c.loss, color="0.8", lw=0.8, zorder=1)
    norm = LogNorm(a.N.min(), a.N.max() if a.N.max() > a.N.min() else a.N.min() * 2)
    fit = ~a.holdout
    sc = ax.scatter(a.C[fit], a.L[fit], c=a.N[fit], norm=norm, cmap="viridis", s=28, zorder=3,
                    edgecolors="k", linewidths=0.3, label="runs (final loss)")  # fmt: skip
    if a.holdout.any():
        ax.scatter(a.C[a.holdout], a.L[a.holdout], facecolors="none", s=40, zorder=3,
                   edgecolors=colormaps["viridis"](norm(a.N[a.holdout])), linewidths=1.2,
                   label="held-out runs")  # fmt: skip
    fig.colorbar(sc, ax=ax, label="parameters N")
    ax.plot(
        a.frontier_C, a.frontier_L, "k.", ms=3, zorder=4, label=f"frontier ({a.frontier_source})"
    )
    Cx = _compute_axis(a)
    inside = Cx <= a.C.max()
    if a.compute:
        law = a.compute.law
        y = law.loss(Cx)
        ax.plot(Cx[inside], y[inside], "k-", lw=1.6, zorder=5,
                label=f"L(C) = {law.E:.3g} + {law.A:.3g}·C^-{law.alpha:.3f}")  # fmt: skip
        ax.plot(Cx[~inside], y[~inside], "k--", lw=1.4, zorder=5)
        if a.compute.boot_laws:
            lo, hi = a.compute.band(Cx)
            ax.fill_between(
                Cx, lo, hi, color="k", alpha=0.12, lw=0, label=f"{a.options.level:.0%} interval"
            )
    if a.parametric:
        opt = _approach3_optimal(a, Cx)
        ax.plot(Cx, opt["L"][0], color=COLORS["approach3"], ls=":", lw=1.6,
                label="L(N_opt, D_opt) from L(N, D) fit")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("loss")
    ax.set_title("Loss vs compute and the compute frontier")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper right")
    fig.savefig(path, dpi=130)


def _display_profile(a: Analysis, m: np.ndarray) -> IsoFLOPProfile | None:
    """The fitted profile of the runs in mask m (refit when approach 2 as a whole failed)."""
    fit = m & ~a.holdout
    if a.isoflop:
        budget = np.exp(np.mean(np.log(a.C[fit]))) if fit.any() else np.nan
        for p in a.isoflop.profiles:
            if np.isclose(p.budget, budget, rtol=1e-9):
                return p
    try:
        return fit_profile(a.N[fit], a.D[fit], a.C[fit], a.L[fit]) if fit.any() else None
    except ScalingDataError:
        return None


def plot_isoflop(a: Analysis, path: Path) -> None:
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    groups = np.unique(a.budget)
    cmap = colormaps["plasma"]
    for i, g in enumerate(groups):
        m = a.budget == g
        color = cmap(0.85 * i / max(1, len(groups) - 1))
        ax.scatter(a.N[m & ~a.holdout], a.L[m & ~a.holdout], color=color, s=22, zorder=3)
        ax.scatter(
            a.N[m & a.holdout], a.L[m & a.holdout], facecolors="none", edgecolors=color, s=30
        )
        label = f"C = {np.exp(np.mean(np.log(a.C[m]))):.2g}"
        p = _display_profile(a, m)
        if p is not None:
            x = np.geomspace(p.n_range[0] / 1.3, p.n_range[1] * 1.3, 100)
            note = "" if p.usable else f" ({p.note})"
            ax.plot(x, p.loss(x), color=color, lw=1.3, ls="-" if p.usable else "--",
                    label=label + note)  # fmt: skip
            if p.usable:
                ax.plot(
                    p.N_opt, p.L_opt, marker="*", color=color, ms=13, mec="k", mew=0.6, zorder=4
                )
        else:
            held = (m & a.holdout).all()
            ax.plot([], [], color=color, label=label + (" (held out)" if held else " (no fit)"))
        if a.parametric:
            x = np.geomspace(a.N[m].min() / 1.3, a.N[m].max() * 1.3, 100)
            C = np.exp(np.mean(np.log(a.C[m])))
            ax.plot(x, a.parametric.law.loss(x, C / (a.k_flops * x)), color=color, lw=0.8, ls=":")
    ax.plot([], [], "k*", ms=10, label="parabola minimum")
    if a.parametric:
        ax.plot([], [], "k:", lw=0.8, label="L(N, D) fit along the budget")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final loss")
    ax.set_title("IsoFLOP profiles (approach 2): loss vs model size at fixed compute")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, ncols=2)
    fig.savefig(path, dpi=130)


def plot_optimal_allocation(a: Analysis, path: Path) -> None:
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    Cx = _compute_axis(a)
    for ax, which in zip(axes, ("N", "D")):
        if a.envelope:
            e = a.envelope.env
            pts = e.N if which == "N" else e.D
            ax.plot(e.C[a.envelope.used], pts[a.envelope.used], ".", color=COLORS["approach1"],
                    ms=2.5, alpha=0.6, label="envelope points (approach 1)")  # fmt: skip
            law = a.envelope.n_law if which == "N" else a.envelope.d_law
            ax.plot(Cx, law(Cx), color=COLORS["approach1"], lw=1.3,
                    label=f"approach 1: ∝ C^{law.exponent:.3f}")  # fmt: skip
        if a.isoflop:
            good = [p for p in a.isoflop.profiles if p.usable]
            ax.plot([p.budget for p in good], [p.N_opt if which == "N" else p.D_opt for p in good],
                    "*", color=COLORS["approach2"], ms=11, mec="k", mew=0.5,
                    label="IsoFLOP minima")  # fmt: skip
            law = a.isoflop.n_law if which == "N" else a.isoflop.d_law
            ax.plot(Cx, law(Cx), color=COLORS["approach2"], lw=1.5,
                    label=f"approach 2: ∝ C^{law.exponent:.3f}")  # fmt: skip
            if len(a.isoflop.boot):
                lo, hi = a.isoflop.band(Cx, which)
                ax.fill_between(Cx, lo, hi, color=COLORS["approach2"], alpha=0.15, lw=0)
        if a.parametric:
            opt = _approach3_optimal(a, Cx)[which]
            exp = a.parametric.law.a if which == "N" else a.parametric.law.b
            ax.plot(Cx, opt[0], color=COLORS["approach3"], lw=1.5, ls="--",
                    label=f"approach 3: ∝ C^{exp:.3f}")  # fmt: skip
            if len(opt) == 3:
                ax.fill_between(Cx, opt[1], opt[2], color=COLORS["approach3"], alpha=0.15, lw=0)
        for row in a.predictions():
            for key, dx in (("approach2", 0.97), ("approach3", 1.03)):
                if key in row:
                    est = row[key][f"{which}_opt"]
                    if not np.isnan(est.lo):
                        ax.errorbar(row["C"] * dx, est.value,
                                    yerr=[[est.value - est.lo], [est.hi - est.value]],
                                    fmt="o", color=COLORS[key], ms=4, capsize=3)  # fmt: skip
        ax.axvspan(a.C.min(), a.C.max(), color="0.5", alpha=0.07, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(
            "compute-optimal parameters N_opt" if which == "N" else "compute-optimal tokens D_opt"
        )
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7.5)
    fig.suptitle(f"Compute-optimal allocation ({a.options.level:.0%} bootstrap intervals; "
                 f"shaded: sampled compute range)", fontsize=10)  # fmt: skip
    fig.savefig(path, dpi=130)


def plot_all(a: Analysis, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        out_dir / "loss_vs_compute.png",
        out_dir / "isoflop.png",
        out_dir / "optimal_allocation.png",
    ]
    plot_loss_vs_compute(a, paths[0])
    plot_isoflop(a, paths[1])
    plot_optimal_allocation(a, paths[2])
    return paths
