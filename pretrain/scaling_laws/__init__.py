"""Scaling-law studies: plan IsoFLOP grids, collect run results, fit laws, predict, plot."""
