"""The chain, as declared stages in the order data flows. The DAG factory, the command line and
the tests take stages from here (``STAGES[name]``) and run them with
:func:`clcplus_ops.runner.run_stage`."""

from __future__ import annotations

from clcplus_ops.classification.classify import CLASSIFY
from clcplus_ops.model.extraction import EXTRACT_TILE_SAMPLES
from clcplus_ops.model.stages import AUDIT, EVALUATE, EXTRACT, FINAL_FIT, REGISTER, REVIEW
from clcplus_ops.plan import DEFINE_TILE, JOIN_TILES, PLAN_TILES
from clcplus_ops.postprocessing.blending import BLEND
from clcplus_ops.postprocessing.calibration import CALIBRATE
from clcplus_ops.postprocessing.filtering import FILTER
from clcplus_ops.postprocessing.layers import LAYERS
from clcplus_ops.postprocessing.mosaic import MOSAIC
from clcplus_ops.postprocessing.previous import IMPORT_PRODUCTION
from clcplus_ops.postprocessing.recoding import RECODE
from clcplus_ops.products.stages import PRODUCT_CHECK, PRODUCT_METADATA, PRODUCT_PUBLISH, PRODUCT_STAC, PRODUCT_TILE
from clcplus_ops.sentinel2.ingest import INGEST

# A production unit's run: plan, then per tile (mapped), then the join and the PU's stages on
# the product grid, in order: its mosaic, then (once the neighbouring PUs' mosaics exist, a wait
# that only the DAG has: clcplus_airflow.neighbours) the blend, the interannual calibration
# against the previous productions, the rule-based recoding and the layers.
PU_START = (PLAN_TILES,)
TILE_STAGES = (DEFINE_TILE, INGEST, CLASSIFY, FILTER)
PU_JOIN = (JOIN_TILES, MOSAIC)
PU_BLEND = (BLEND, CALIBRATE, RECODE, LAYERS)
PU_END = (*PU_JOIN, *PU_BLEND)
# Then, for each 100 km product tile of the PU whose PUs all have layers (the last PU to finish
# makes it): the tile's layers, metadata, STAC and package, self-check and publishing.
PRODUCT_TILE_STAGES = (PRODUCT_TILE, PRODUCT_METADATA, PRODUCT_STAC, PRODUCT_CHECK, PRODUCT_PUBLISH)
# A production unit's training (the expert review sits between audit and evaluate).
TRAINING_STAGES = (EXTRACT, AUDIT, REVIEW, EVALUATE, FINAL_FIT, REGISTER)

# Outside a run: an external production imported as a PU's production of an earlier year.
PREVIOUS_PRODUCTIONS = (IMPORT_PRODUCTION,)

STAGES = {stage.name: stage for stage in (*PU_START, *TILE_STAGES, *PU_END, *PRODUCT_TILE_STAGES, *PREVIOUS_PRODUCTIONS,
                                          EXTRACT_TILE_SAMPLES, *TRAINING_STAGES)}
