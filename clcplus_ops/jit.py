"""numba, as the compiled kernels (scene compositing, time-series interpolation, bilateral
filter) import it, and their compilation ahead of the first task.

The kernels are compiled on first use and cached next to their modules (``NUMBA_CACHE_DIR``
elsewhere). A cold compile takes seconds (the bilateral filter about 13 s on 2 cores), which a
task started in a fresh container would pay each time: the image build and the bootstrap run
``python -m clcplus_ops.jit`` once, so tasks load the kernels from the cache.
"""

from __future__ import annotations

import logging
import time

import numba

# numba's compiler logs each SSA and bytecode-flow step at DEBUG: tens of thousands of lines per
# kernel compiled on a cold cache, which would bury a task's own DEBUG log (stages, store, GDAL).
logging.getLogger("numba").setLevel(logging.INFO)

__all__ = ["compile_kernels", "numba"]


def compile_kernels() -> dict[str, dict]:
    """Run each kernel once on a tiny input through its public function (so with the argument
    types production uses) and say, per kernel, whether it came from the cache."""
    import numpy as np

    from clcplus_ops.config import Config
    from clcplus_ops.postprocessing import bilateral
    from clcplus_ops.sentinel2 import compositing, timeseries

    config = Config()
    # The scene assets' types production meets: uint8 SCL, uint16 bands.
    window = compositing.SourceWindow(np.ones((2, 2), np.uint16), np.zeros(2, np.int64), np.zeros(2, np.int64), 0)
    scl = compositing.SourceWindow(np.full((2, 2), 4, np.uint8), window.rows, window.cols, 0)
    pixels, taken, new = compositing.Pixels.of(2, 2, None), np.zeros(4, bool), np.zeros(4, bool)
    runs = {
        "bilateral filter": (bilateral._filter, lambda: bilateral.bilateral_filter(
            np.full((2, 8, 8), 0.5, np.float32), None, bilateral.BilateralParams.from_config(config.bilateral))),
        "time-series interpolation": (timeseries._interpolate, lambda: timeseries.interpolate(
            np.zeros((2, len(config.sentinel2.bands), 3), np.int16), np.ones((2, 3), bool), np.array([0.0, 5.0]),
            np.array([1.0, 2.0]), timeseries.index_band_positions(config.sentinel2.bands, config.sentinel2.indices))),
        "cloud mask of a scene": (compositing._clear_new, lambda: compositing.new_clear(
            scl, compositing.clear_lookup(config.sentinel2.scl_masked_classes), pixels, taken, new)),
        "compositing a scene": (compositing._composite, lambda: compositing.composite(
            [window] * 2, [0, None], [1.0, 1.0], [-1000.0, 0.0], pixels, new, taken, np.zeros((2, 4), np.int16))),
    }
    report = {}
    for name, (kernel, run) in runs.items():
        started = time.perf_counter()
        run()
        report[name] = {"seconds": round(time.perf_counter() - started, 2),
                        "from_cache": sum(kernel.stats.cache_hits.values()) > 0,
                        "compiled": sum(kernel.stats.cache_misses.values())}
    return report


if __name__ == "__main__":
    for kernel, figures in compile_kernels().items():
        state = "loaded from the cache" if figures["from_cache"] else "compiled and cached"
        print(f"{kernel}: {state} in {figures['seconds']:.1f} s")
