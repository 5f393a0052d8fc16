"""The weight-decay width rule under muP, measured as Fan et al. 2025 recommend.

    python bench/mup_wd_study.py configs/mup_vit_digits.yaml --lr 0.0055 \
        --base-wds 0.0125 0.05 0.2 0.8 --widths 32 512 --exponents 0 0.5 1 --seeds 3 \
        --steps 1000 --jobs 2 --runs /tmp/wd_runs --out bench/mup/vit_wd

"Robust Layerwise Scaling Rules by Proper Weight Decay Tuning" (arXiv 2510.15262): under AdamW
a matrix's top singular value settles near sqrt(η/λ)·d^0.75, so with muP's hidden η ∝ 1/d only
λ ∝ d^0.5 (`model.mup.wd_width_exponent` 0.5, the default) keeps it width-invariant; λ fixed
(exponent 0) lets it grow with width, λ ∝ d (exponent 1, η·λ invariant) shrinks it.

Two phases, every run a real `pretrain train` (its run directory kept under --runs, so an
interrupted study resumes; a run whose status.json says completed is not retrained):
  A. at the base width (the first of --widths), sweep λ over --base-wds at --lr: λ* is the one
     with the lowest final validation loss (mean over seeds) — the proxy's tuned decay;
  B. at every wider width, train at (--lr, λ*) under each exponent, logging σ_max of every
     matrix (`model.mup.log_singular_values`); σ_max(wide) / σ_max(base) is Fan et al.'s
     diagnostic (1 for hidden matrices when the rule is right), and the final validation loss
     says which rule transfers (η, λ) best.
Writes runs.csv (one row per run), sv.csv (per matrix, exponent, seed), summary.json, and
wd_study.png (λ sweep; hidden σ_max ratio per exponent; validation loss per exponent).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pretrain.mup.sv_compare import compare, read_run  # noqa: E402
from pretrain.run_dir import COMPLETED, read_metrics, read_status  # noqa: E402


def run_name(width: int, wd: float, exponent: float, seed: int) -> str:
    return f"w{width}_wd{wd:g}_e{exponent:g}_s{seed}"


def train(recipe: str, runs: Path, lr: float, steps: int, overrides: list[str],
          width: int, wd: float, exponent: float, seed: int) -> Path:  # fmt: skip
    """One `pretrain train` (skipped when its run directory says completed)."""
    run_dir = runs / run_name(width, wd, exponent, seed)
    if (run_dir / "status.json").exists() and read_status(run_dir).get("state") == COMPLETED:
        return run_dir
    argv = [sys.executable, "-m", "pretrain", "train", recipe, *overrides,
            f"model.width={width}", f"optim.lr={lr!r}", f"optim.weight_decay={wd!r}",
            f"model.mup.wd_width_exponent={exponent!r}", "model.mup.log_singular_values=true",
            f"schedule.steps={steps}", f"run.seed={seed}", f"data.seed={seed}",
            f"run.dir={run_dir}", "checkpoint.every_steps=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{run_dir}: pretrain train failed (rc {done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:]}")  # fmt: skip
    return run_dir


def final_losses(run_dir: Path) -> tuple[float, float]:
    """(last validation loss, last logged training loss) of a run."""
    records = read_metrics(run_dir)
    val = [r["loss"] for r in records if r.get("split") == "val"]
    tr = [r["loss"] for r in records if r.get("split") == "train"]
    return (val[-1] if val else math.nan), (tr[-1] if tr else math.nan)


def plot(out: Path, sweep: dict[float, float], sv_rows: list[dict], rows: list[dict],
         base: int, title: str) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    wds = sorted(sweep)
    axes[0].plot(wds, [sweep[w] for w in wds], "o-", color="black")
    axes[0].set(xscale="log", xlabel="weight decay λ", ylabel="final val loss (mean of seeds)",
                title=f"width {base}: λ sweep")  # fmt: skip
    axes[0].set_xticks(wds, [f"{w:g}" for w in wds], minor=False)
    axes[0].minorticks_off()
    exponents = sorted({r["exponent"] for r in sv_rows})
    layers = list(dict.fromkeys(r["layer"] for r in sv_rows if r["kind"] == "hidden"))
    for i, e in enumerate(exponents):
        ratios = [np.mean([r["ratio"] for r in sv_rows if r["exponent"] == e
                           and r["layer"] == layer]) for layer in layers]  # fmt: skip
        axes[1].plot(range(len(layers)), ratios, "o-", label=f"λ ∝ d^{e:g}", color=f"C{i}")
    axes[1].axhline(1.0, color="black", lw=0.8, ls="--")
    axes[1].set_xticks(range(len(layers)))
    axes[1].set_xticklabels(layers, rotation=70, ha="right", fontsize=6)
    axes[1].set(yscale="log", ylabel="σ_max(wide) / σ_max(base)",
                title="hidden matrices: Fan et al.'s check")  # fmt: skip
    axes[1].legend(fontsize=7)
    base_loss = np.mean([r["val_loss"] for r in rows if r["phase"] == "A" and r["is_best"]])
    wider = sorted({r["width"] for r in rows if r["phase"] == "B"})
    for i, e in enumerate(exponents):
        losses = [np.mean([r["val_loss"] for r in rows if r["phase"] == "B"
                           and r["width"] == w and r["exponent"] == e]) for w in wider]  # fmt: skip
        axes[2].plot([base, *wider], [base_loss, *losses], "o-", label=f"λ ∝ d^{e:g}",
                     color=f"C{i}")  # fmt: skip
    axes[2].set(xscale="log", xlabel="width", ylabel="final val loss (mean of seeds)",
                title="at the transferred (η, λ*)")  # fmt: skip
    axes[2].set_xticks([base, *wider], [str(w) for w in (base, *wider)])
    axes[2].minorticks_off()
    axes[2].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "wd_study.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="key=value applied to every run")
    ap.add_argument("--lr", type=float, required=True, help="the base width's tuned lr (η)")
    ap.add_argument("--base-wds", type=float, nargs="+", required=True, help="λ sweep (phase A)")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 512], help="base first")
    ap.add_argument("--exponents", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--runs", type=Path, required=True, help="run directories (kept; resumes)")
    ap.add_argument("--out", type=Path, required=True)
    args, extra = ap.parse_known_args()  # overrides may follow the flags
    args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
    if any("=" not in e or e.startswith("-") for e in extra):
        ap.error(f"unrecognized arguments: {extra}")
    base, wider = args.widths[0], args.widths[1:]
    args.out.mkdir(parents=True, exist_ok=True)

    def go(width: int, wd: float, e: float, seed: int) -> Path:
        return train(args.recipe, args.runs, args.lr, args.steps, args.overrides,
                     width, wd, e, seed)  # fmt: skip

    # the exponent changes nothing at the base width (m = 1): its runs are named exponent 0.5
    with ThreadPoolExecutor(args.jobs) as pool:
        phase_a = {(wd, s): pool.submit(go, base, wd, 0.5, s)
                   for wd in args.base_wds for s in range(args.seeds)}  # fmt: skip
        phase_a = {k: f.result() for k, f in phase_a.items()}
    rows = []
    for (wd, seed), run_dir in phase_a.items():
        val, tr = final_losses(run_dir)
        rows.append({"phase": "A", "width": base, "wd": wd, "exponent": 0.5, "seed": seed,
                     "val_loss": val, "train_loss": tr, "is_best": False})  # fmt: skip
    sweep = {wd: float(np.mean([r["val_loss"] for r in rows if r["wd"] == wd]))
             for wd in args.base_wds}  # fmt: skip
    best_wd = min(sweep, key=lambda wd: (not math.isfinite(sweep[wd]), sweep[wd]))
    for r in rows:
        r["is_best"] = r["wd"] == best_wd
    print(f"phase A (width {base}, lr {args.lr:g}): val loss per λ "
          + ", ".join(f"{wd:g}: {v:.4f}" for wd, v in sweep.items()) + f"; λ* = {best_wd:g}")

    with ThreadPoolExecutor(args.jobs) as pool:
        phase_b = {(w, e, s): pool.submit(go, w, best_wd, e, s)
                   for w in wider for e in args.exponents for s in range(args.seeds)}  # fmt: skip
        phase_b = {k: f.result() for k, f in phase_b.items()}
    sv_rows = []
    for (width, e, seed), run_dir in phase_b.items():
        val, tr = final_losses(run_dir)
        rows.append({"phase": "B", "width": width, "wd": best_wd, "exponent": e, "seed": seed,
                     "val_loss": val, "train_loss": tr, "is_best": False})  # fmt: skip
        a, b = read_run(phase_a[(best_wd, seed)]), read_run(run_dir)
        for r in compare(a, b):
            sv_rows.append({"exponent": e, "width": width, "seed": seed,
                            "kind": a.kinds[r["layer"]], **r})  # fmt: skip

    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(args.out / "sv.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(sv_rows[0]))
        writer.writeheader()
        writer.writerows(sv_rows)
    summary: dict = {"lr": args.lr, "steps": args.steps, "seeds": args.seeds,
                     "base_width": base, "lambda_sweep": {f"{k:g}": v for k, v in sweep.items()},
                     "lambda_star": best_wd, "per_exponent": {}}  # fmt: skip
    for width in wider:
        for e in args.exponents:
            hidden = [r["ratio"] for r in sv_rows
                      if r["exponent"] == e and r["width"] == width and r["kind"] == "hidden"]
            val = [r["val_loss"] for r in rows
                   if r["phase"] == "B" and r["exponent"] == e and r["width"] == width]
            summary["per_exponent"][f"{width}/{e:g}"] = {
                "hidden_sv_ratio_median": float(np.median(hidden)),
                "hidden_sv_ratio_range": [float(min(hidden)), float(max(hidden))],
                "val_loss_mean": float(np.mean(val)), "val_loss_std": float(np.std(val)),
            }  # fmt: skip
            s = summary["per_exponent"][f"{width}/{e:g}"]
            print(f"width {width}, λ ∝ d^{e:g}: hidden σ_max ratio median "
                  f"{s['hidden_sv_ratio_median']:.3f} (range {min(hidden):.3f}-{max(hidden):.3f}),"
                  f" val loss {s['val_loss_mean']:.4f} ± {s['val_loss_std']:.4f}")  # fmt: skip
    summary["base_val_loss"] = sweep[best_wd]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(args.out, sweep, sv_rows, rows, base,
         f"{Path(args.recipe).stem}: weight-decay width rule, lr {args.lr:g}, "
         f"{args.steps} steps, {args.seeds} seed(s)")  # fmt: skip
    print(f"wrote {args.out / 'runs.csv'}, {args.out / 'sv.csv'}, {args.out / 'summary.json'}, "
          f"{args.out / 'wd_study.png'}")


if __name__ == "__main__":
    main()
