"""Scaling-law studies: plan IsoFLOP grids, collect run results, fit laws, predict, plot.

Where things are (one job per module; nothing is imported here, so `pretrain scaling --help`
stays fast):

    validate.py     input checks that name the column, the run and the reason
    huber_fit.py    Huber loss on log-loss residuals, log-sum-exp power laws, L-BFGS from a grid;
                    fit_huber_law: the fit + bootstrap procedure of approach 3 and L(C) (LawFit)
    parametric.py   approach 3: L(N, D) = E + A/N^alpha + B/D^beta, compute-optimal N and D
    compute_law.py  the compute frontier L(C) = E + A*C^-alpha
    isoflop.py      approach 2: robust parabola per budget, N_opt(C) and D_opt(C) power laws
    envelope.py     approach 1: envelope of training curves; Pareto frontier of final losses
    powerlaw.py     log-log line fits; AllocationLaws: N_opt/D_opt estimates of approaches 1, 2
    bootstrap.py    resampling runs (as integer weights), worker processes, percentile intervals;
                    replicates: the seeded resample-refit loop every fit uses
    quality.py      goodness of fit and estimates with intervals
    analysis.py     runs every applicable fit, predictions and warnings
    plots.py        loss vs compute, IsoFLOP profiles, N_opt/D_opt vs compute (PNG, Agg)
    diagnostics.py  residuals by budget and size, leave-one-budget-out error (in the report)
    report.py       the Markdown report
    curve_laws.py   loss-curve laws under an LR schedule: LR-annealing law, multi-power law
    curve_fit.py    fitting them to curves of runs under different schedules (bootstrap over runs)
    curve_study.py  `fit-curves`: one fit per law and model size, predictions, report
    curve_plots.py  its figure: observed vs fitted/predicted curves
    schedule_curves.py  runs' LR sequences from their schedule columns (pretrain.schedule.lr_at)
    compare.py      two studies by their compute frontiers: crossing, P(A beats B) at a compute
    branch_plan.py  branched WSD plans: decay branches resumed from one stable-phase checkpoint
    plan.py         IsoFLOP grid from a base recipe's shapes and FLOPs accounting; writes sweep
                    files (launch/sweep.py reads them, for `scaling run` and `slurm sweep`)
    runner.py       run a sweep locally, one run after another
    collect.py      run directories -> runs.csv and curves.csv
    table.py        the runs.csv / curves.csv formats
    study.py        plan -> run -> collect -> fit -> plot -> report
    synthetic.py    studies drawn from a known law (tests, benchmark)
    cli.py          `pretrain scaling {plan,plan-branches,run,collect,fit,fit-curves,compare,study}`
"""
