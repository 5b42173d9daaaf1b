"""The synthetic Sentinel-2 world: a seeded, deterministic stand-in for the Sentinel-2 L2A
archive (COGs + a static STAC catalogue shaped like Earth Search's Collection-1), with the
ground truth, per-pixel clear-observation counts and labelled samples that make honest
checks of the production chain possible. See ``CLASS_MODELS.md`` and ``world.build_world``.
"""

from clcplus_ops.synthetic.changes import landscape_for_year
from clcplus_ops.synthetic.recoding_sources import recoding_urls
from clcplus_ops.synthetic.world import build_world, changes_url, resolve_area, world_url

__all__ = ["build_world", "changes_url", "landscape_for_year", "recoding_urls", "resolve_area", "world_url"]
