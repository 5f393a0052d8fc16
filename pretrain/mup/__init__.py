"""muP tooling around the parametrization (pretrain/models/parametrization.py).

- runner.py: build a width variant of a recipe and train it for a few steps through the real engine
  and the trainer's own step function (pretrain/step.py)
- coord_check.py: mean |activation| per layer per step across widths, SP vs muP, with a verdict;
  or across depths, muP with and without the depth rule (depth-muP, CompleteP)
- transfer.py: learning-rate sweeps across widths (or depths), optimum per width (or depth)
- singular_values.py: top singular value of every weight matrix (Fan et al. 2025's diagnostic)
- sv_compare.py: two runs' logged σ_max per matrix and their ratio (`pretrain mup sv-compare`)
- plots.py: the PNG panels (matplotlib, Agg)
"""
