"""The figures of `fit-curves`: observed evaluations and each law's fitted or predicted curve,
per law and model size, and the law across sizes with one panel per size, drawn on
`matplotlib.figure.Figure` (Agg, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from pretrain.scaling_laws.schedule_curves import Schedule


def plot_curve_fits(sizes: list, predict: list[Schedule], path: Path) -> None:
    """Observed (dots) and fitted/predicted (lines) loss vs step; one panel per law and size.
    `sizes`: curve_study.SizeFits (params, curves, holdout, fits), not imported: no circle."""
    panels = [(s, law) for s in sizes for law in s.fits]
    fig = Figure(figsize=(6.5 * len(panels), 4.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    cmap = colormaps["tab10"]
    for ax, (size, law) in zip(axes, panels):
        fit = size.fits[law]
        first = min(int(c.steps.min()) for c in size.curves)  # a law says little before data
        observed = np.concatenate([c.loss for c in size.curves])
        for i, (c, held) in enumerate(zip(size.curves, size.holdout)):
            color = cmap(i % 10)
            x = np.arange(first, c.schedule.cfg.steps + 1)
            lrs = c.schedule.lrs()
            tag = "held out" if held else "fitted"
            ax.plot(c.steps, c.loss, "o", ms=3, color=color,
                    label=f"{c.name} ({c.schedule.label()}), observed")  # fmt: skip
            ax.plot(x, fit.predict(lrs, x), ls="--" if held else "-", color=color, lw=1.3,
                    label=f"{c.name}: law ({tag})")  # fmt: skip
            band = fit.band(lrs, x) if held else None
            if band is not None:
                ax.fill_between(x, band[0], band[1], color=color, alpha=0.15, lw=0)
        for j, s in enumerate(predict):
            x = np.arange(first, s.cfg.steps + 1)
            ax.plot(x, fit.predict(s.lrs(), x), ls=":", lw=1.5, color=cmap((len(size.curves) + j)
                    % 10), label=f"predicted: {s.label()}")  # fmt: skip
        pad = 0.05 * (observed.max() - observed.min())
        ax.set_ylim(observed.min() - pad, observed.max() + pad)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(f"{law} law, N = {size.params:.3g}: observed vs predicted", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=130)


def plot_size_fit(fit, curves: list, path: Path) -> None:
    """Observed (dots) and the law across sizes (lines; dashed with its bootstrap band for a
    held-out size), one panel per model size. `fit`: curve_sizes.SizedCurveFit."""
    sizes = sorted({c.params for c in curves})
    fig = Figure(figsize=(4.8 * len(sizes), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes), sharey=True))
    cmap = colormaps["tab10"]
    observed = np.concatenate([c.loss for c in curves])
    for ax, n in zip(axes, sizes):
        held = n in fit.held_out_sizes
        group = [c for c in curves if c.params == n]
        first = min(int(c.steps.min()) for c in group)
        for i, c in enumerate(group):
            x = np.arange(first, c.schedule.cfg.steps + 1)
            lrs = c.schedule.lrs()
            ax.plot(c.steps, c.loss, "o", ms=3, color=cmap(i % 10),
                    label=f"{c.schedule.label()}, observed")  # fmt: skip
            ax.plot(x, fit.predict(lrs, x, n), ls="--" if held else "-", color=cmap(i % 10),
                    lw=1.3, label="law (predicted)" if held else "law (fitted)")  # fmt: skip
            band = fit.band(lrs, x, n) if held else None
            if band is not None:
                ax.fill_between(x, band[0], band[1], color=cmap(i % 10), alpha=0.15, lw=0)
        ax.set_title(f"N = {n:.3g}" + (" (held out)" if held else " (fitted)"), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    pad = 0.05 * (observed.max() - observed.min())
    axes[0].set_ylim(observed.min() - pad, observed.max() + pad)
    axes[0].set_ylabel("loss")
    fig.suptitle("LR-annealing law across model sizes: observed vs fitted / predicted")
    fig.savefig(path, dpi=110)
