"""PNG panels for the coordinate check and the LR-transfer sweep (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

from pretrain.mup.coord_check import mean_over_seeds
from pretrain.mup.runner import sweep_axis
from pretrain.mup.transfer import curves, optima


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(parametrization: str) -> str:
    names = {"mup": "muP", "sp": "SP", "depth-mup": "depth-muP (α=½)", "completep": "CompleteP"}
    return names.get(parametrization, parametrization)


def plot_coord_check(records: list[dict], path: Path, max_panels: int = 4, title: str = "") -> None:
    """One row per parametrization, one column per step shown: mean |act| vs width (or depth)
    per layer."""
    plt = _pyplot()
    axis = sweep_axis(records)
    means = mean_over_seeds(records)
    params = list(dict.fromkeys(r["parametrization"] for r in records))
    layers = list(dict.fromkeys(r["layer"] for r in records))
    all_steps = sorted({r["step"] for r in records})
    idx = sorted(
        {round(i * (len(all_steps) - 1) / max(max_panels - 1, 1)) for i in range(max_panels)}
    )
    steps = [all_steps[i] for i in idx]
    fig, axes = plt.subplots(
        len(params),
        len(steps),
        figsize=(3.2 * len(steps), 2.9 * len(params)),
        squeeze=False,
        sharey="row",
    )
    cmap = plt.get_cmap("viridis")
    for i, param in enumerate(params):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            for k, layer in enumerate(layers):
                pts = sorted(
                    (w, v)
                    for (p, lay, s, w), v in means.items()
                    if p == param and lay == layer and s == step
                )
                pts = [(w, v) for w, v in pts if v > 0]
                if pts:
                    ax.plot(
                        [w for w, _ in pts],
                        [v for _, v in pts],
                        "o-",
                        ms=3,
                        lw=1.2,
                        color=cmap(k / max(len(layers) - 1, 1)),
                        label=layer,
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{_label(param)}  step {step}", fontsize=9)
            ax.tick_params(labelsize=7)
            if i == len(params) - 1:
                ax.set_xlabel(axis, fontsize=8)
            if j == 0:
                ax.set_ylabel("mean |activation|", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_transfer(
    rows: list[dict], path: Path, metric: str = "train_loss", title: str = ""
) -> None:
    """One panel per parametrization: loss vs LR, one curve per width (or depth), the optimum
    starred."""
    plt = _pyplot()
    axis = sweep_axis(rows)
    data = curves(rows, metric)
    best = optima(rows, metric)
    params = list(dict.fromkeys(p for p, _ in data))
    widths = sorted({w for _, w in data})
    finite = [loss for pts in data.values() for _, loss in pts if math.isfinite(loss)]
    lo = min(finite) if finite else 0.0

    def best_finite(pts: list[tuple[float, float]]) -> float:
        return min((loss for _, loss in pts if math.isfinite(loss)), default=lo)

    bests = [best_finite(pts) for pts in data.values()]
    floor_best, worst_best = min(bests, default=lo), max(bests, default=lo)
    hi = worst_best + 1.5 * max(worst_best - floor_best, 0.1) + 0.3
    fig, axes = plt.subplots(
        1, len(params), figsize=(5.2 * len(params), 3.8), squeeze=False, sharey=True
    )
    cmap = plt.get_cmap("plasma")
    for i, param in enumerate(params):
        ax = axes[0][i]
        for k, width in enumerate(widths):
            pts = data.get((param, width), [])
            color = cmap(k / max(len(widths), 1))
            ax.plot(
                [lr for lr, _ in pts],
                [min(loss, hi) if math.isfinite(loss) else hi for _, loss in pts],
                "o-",
                ms=3,
                lw=1.3,
                color=color,
                label=f"{axis} {width}",
            )
            if (param, width) in best:
                lr = best[(param, width)]
                ax.plot([lr], [dict(pts)[lr]], "*", ms=13, color=color, markeredgecolor="black")
        ax.set_xscale("log", base=2)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi)
        ax.set_xlabel("learning rate (base, before per-group multipliers)")
        ax.set_title(_label(param))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " ") + " (diverged/clipped at top)")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sv_ratios(rows: list[dict], path: Path, title: str = "") -> None:
    """σ_max ratio (B / A) per matrix as bars on a log axis, 1 marked: Fan et al.'s check."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(rows) + 1.5), 3.6))
    ax.bar(range(len(rows)), [r["ratio"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.plot(range(len(rows)), [r["expected"] for r in rows], "k_", ms=14, mew=2,
            label="muP's width-consistent ratio")  # fmt: skip
    ax.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["layer"] for r in rows], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("σ_max ratio B / A")
    ax.set_title(title or "top singular value ratio per matrix", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
