"""A short Markdown report of a study: data, each fit with intervals and goodness of fit,
held-out error, and compute-optimal predictions, with the FLOPs accounting stated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pretrain.scaling_laws.analysis import Analysis
from pretrain.scaling_laws.quality import Estimate, FitQuality


def _q(q: FitQuality | None, of: str = "log L") -> str:
    if q is None:
        return "–"
    r2 = "" if np.isnan(q.r2) else f", R² {q.r2:.4f}"
    return (
        f"RMSE({of}) {q.rmse_log:.4f}, median |error| {q.median_abs_log:.4f}, "
        f"max {q.max_abs_log:.4f}{r2} (n={q.n})"
    )


def _params(params: dict[str, Estimate], keys: list[str]) -> list[str]:
    return [
        f"| {k} | {params[k].value:.4g} | {params[k].lo:.4g} | {params[k].hi:.4g} |" for k in keys
    ]


def _table_head(level: float) -> list[str]:
    pct = f"{level:.0%}"
    return [f"| parameter | estimate | {pct} low | {pct} high |", "|---|---|---|---|"]


def render(a: Analysis, figures: list[Path], flops_note: str = "",
           diagnostics: Sequence[str] = ()) -> str:  # fmt: skip
    o = a.options
    lines = ["# Scaling-law study", ""]
    lines += [f"> **WARNING:** {w}" for w in a.warnings()] + ([""] if a.warnings() else [])
    lines += [
        f"{len(a.names)} runs in {len(np.unique(a.budget))} compute budget(s), "
        f"C from {a.C.min():.3g} to {a.C.max():.3g} FLOPs, N from {a.N.min():.3g} to "
        f"{a.N.max():.3g} ({o.params_column}), D from {a.D.min():.3g} to {a.D.max():.3g} tokens.",
        f"Bootstrap: {o.n_boot} resamples of runs, {o.level:.0%} percentile intervals. "
        f"Huber δ = {o.delta:g} on log-loss residuals.",
    ]
    if a.holdout.any():
        lines.append(
            f"Held out (not fitted, scored): {int(a.holdout.sum())} runs of the "
            f"{o.holdout_largest} largest budget(s)."
        )
    lines += [
        "",
        f"**FLOPs accounting.** C is the training compute logged by each run. Measured "
        f"C/(N·D) = {a.k_measured:.3g} (6 = dense forward+backward, attention and readout "
        f"not counted); approach 3 allocates with C = {a.k_flops:.3g}·N·D."
        + (f" Model accounting: {flops_note}" if flops_note else ""),
        "",
    ]
    if a.parametric:
        p = a.parametric
        lines += ["## Approach 3: L(N, D) = E + A/N^α + B/D^β", ""]
        lines += _table_head(p.level) + _params(
            p.params, ["E", "A", "B", "alpha", "beta", "a", "b"]
        )
        lines += [
            "",
            "a = β/(α+β) and b = α/(α+β) are the exponents of N_opt and D_opt in C. "
            f"Fit: {_q(p.quality)}. Held out: {_q(p.holdout_quality)}. "
            f"L-BFGS from {p.n_starts} grid starts, converged: {p.converged}; "
            f"failed resamples: {p.n_boot_failed}.",
            "",
        ]
    if a.isoflop:
        f = a.isoflop
        lines += ["## Approach 2: IsoFLOP profiles, N_opt = k_N·C^a, D_opt = k_D·C^b", ""]
        lines += _table_head(f.level) + _params(f.params, ["a", "k_N", "b", "k_D"])
        lines += [
            "",
            "| budget C | runs | N_opt | D_opt | loss at min | used |",
            "|---|---|---|---|---|---|",
        ]
        for pr in f.profiles:
            used = "yes" if pr.usable else f"no: {pr.note}"
            lines.append(
                f"| {pr.budget:.3g} | {pr.n_points} | {pr.N_opt:.3g} | {pr.D_opt:.3g} "
                f"| {pr.L_opt:.4g} | {used} |"
            )
        lines += [
            "",
            f"N_opt(C) line through the minima: {_q(f.quality, 'log N_opt')}. "
            f"Held out (N_opt predicted at held-out budgets vs their own parabola minima): "
            f"{_q(f.holdout_quality, 'log N_opt')}.",
            "",
        ]
    if a.envelope:
        e = a.envelope
        lines += ["## Approach 1: envelope of training curves", ""]
        lines += _table_head(e.level) + _params(e.params, ["a", "k_N", "b", "k_D"])
        lines += [
            "",
            f"{int(e.used.sum())} of {len(e.env.C)} envelope points used (edge models excluded).",
            "",
        ]
    if a.compute:
        c = a.compute
        lines += [f"## Compute frontier L(C) = E + A·C^-α ({a.frontier_source})", ""]
        lines += _table_head(c.level) + _params(c.params, ["E", "A", "alpha"])
        lines += ["", f"Fit: {_q(c.quality)}. Held out: {_q(c.holdout_quality)}.", ""]
    preds = a.predictions()
    if preds:
        lines += [
            "## Compute-optimal predictions",
            "",
            "| C (FLOPs) | approach | N_opt | D_opt | tokens/param | loss |",
            "|---|---|---|---|---|---|",
        ]
        for row in preds:
            for key in ("approach3", "approach2", "approach1"):
                if key in row:
                    r = row[key]
                    loss = r.get("loss", row.get("compute_law_loss", ""))
                    lines.append(
                        f"| {row['C']:.3g} | {key[-1]} | {r['N_opt']} | {r['D_opt']} | "
                        f"{r['tokens_per_param']} | {loss} |"
                    )
        lines += [
            "",
            "Loss: approach 3 gives L(N_opt, D_opt); approaches 1 and 2 give the compute "
            "frontier L(C). Tokens/param is D_opt/N_opt.",
            "",
        ]
    if a.loss_predictions():
        lines += ["## Loss predictions (approach 3)", "", "| N | D | loss |", "|---|---|---|"]
        lines += [f"| {r['N']:.3g} | {r['D']:.3g} | {r['loss']} |" for r in a.loss_predictions()]
        lines.append("")
    if a.skipped:
        lines += ["## Not fitted", ""] + [f"- {k}: {v}" for k, v in a.skipped.items()] + [""]
    lines += list(diagnostics)  # diagnostics.render: residual groups, leave-one-budget-out
    lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
    return "\n".join(lines)
