"""Sentinel-2 input: the band catalogue, scene search (STAC API or static catalogue), the SCL
cloud mask, and the equidistant time series a tile is classified from."""
