"""Reports of a run: training curves, temperature plots, the per-token temperature report."""
