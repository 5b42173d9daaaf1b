"""Classification of the tiles: the PU model applied to every pixel, giving 11-band class probabilities (ATBD 3.1.5 c)."""
