"""Post-processing of the per-tile class probabilities (ATBD 3.1.6)."""
