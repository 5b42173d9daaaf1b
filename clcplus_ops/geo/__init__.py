"""Geography: the area of interest, the EEA 100 km product grid, the Sentinel-2 MGRS
processing tiles and the production-unit layout."""
