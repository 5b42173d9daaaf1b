"""The Europe cost model (issue 16, item 1): counts of the layouts, the scaling of measured
rates, and `clcplus estimate` naming the rates it used and the benchmarks it lacks."""

from __future__ import annotations

import json

import pytest

from clcplus_ops import estimate as cost
from clcplus_ops.config import load_config


@pytest.fixture(scope="module")
def production():
    return cost.layout_counts(load_config(), "production")


def test_the_production_layout_counts(production):
    # 16,406 PU-tiles (the figure) are 12,278 distinct 25 km tiles: each ingested once.
    assert (production.pus, production.pu_tiles, production.distinct_tiles) == (138, 16_406, 12_278)
    assert production.tile_mpx == pytest.approx(2516 ** 2 / 1e6)
    assert production.units("ingest") == (12_278, pytest.approx(12_278 * 2516 ** 2 / 1e6))
    assert production.units("classify")[0] == production.units("filter")[0] == 16_406
    assert production.product_tiles > 600 and production.pu_grid_mpx > 60_000  # 6 M km2 at 10 m, bounding boxes


def test_classification_is_counted_in_the_pus_buffered_areas(production):
    # A tile touching a PU is classified only within the PU's buffer plus margin: about three
    # quarters of the PU-tiles' pixels; the whole tiles when inference.pu_area_only is off.
    whole = production.pu_tiles * production.tile_mpx
    assert production.units("classify") == production.units("filter") == (16_406, production.classified_mpx)
    assert 0.65 * whole < production.classified_mpx < 0.85 * whole
    config = load_config().for_layout("demo")
    off = config.model_copy(update={"inference": config.inference.model_copy(update={"pu_area_only": False})})
    counts_off = cost.layout_counts(off, "demo")
    assert counts_off.classified_mpx == pytest.approx(counts_off.pu_tiles * counts_off.tile_mpx)
    assert cost.layout_counts(config, "demo").classified_mpx < counts_off.classified_mpx


def test_rates_scale_by_the_layout_and_name_their_source(production, tmp_path):
    rates = tmp_path / "rates.json"
    cost.record_rate(cost.Rate("ingest", cpu_seconds_per_mpx=10.0, bytes_per_mpx=50 * cost.MIB, files_per_unit=14,
                               inputs_per_unit=2000, measured_by="bench A", detail="tile T"), rates)
    cost.record_rate(cost.Rate("classify", cpu_seconds_per_mpx=4.0, bytes_per_mpx=20 * cost.MIB,
                               gpu_mpx_per_second=30.0, measured_by="bench B"), rates)
    cost.record_rate(cost.Rate("classify", cpu_seconds_per_mpx=5.0, bytes_per_mpx=20 * cost.MIB,
                               gpu_mpx_per_second=30.0, measured_by="bench B"), rates)  # replaces
    read = cost.read_rates(rates)
    assert sorted(read) == ["classify", "ingest"] and read["classify"].cpu_seconds_per_mpx == 5.0
    costs = {c.stage: c for c in cost.estimate(production, read)}
    ingest = costs["ingest"]
    assert ingest.core_hours == pytest.approx(10.0 * production.distinct_tiles * production.tile_mpx / 3600)
    assert ingest.written_tib == pytest.approx(50 * production.distinct_tiles * production.tile_mpx / (1 << 20))
    # 14 files of ~22 MiB: multipart (3 parts + 2) each, and the record.
    assert ingest.puts == pytest.approx(production.distinct_tiles * (14 * (3 + 2) + 1))
    assert costs["filter"].core_hours is None and costs["filter"].rate is None
    wall = cost.wall_hours(list(costs.values()), cpu_workers=10, cores_per_worker=4, gpus=2)
    assert wall["ingest"] == pytest.approx(ingest.core_hours / 40)
    assert wall["classify"] == pytest.approx(costs["classify"].mpx / 30.0 / 3600 / 2)  # on the GPUs
    with pytest.raises(ValueError, match="no stage"):
        cost.record_rate(cost.Rate("blend", 1.0, 1.0), rates)


def test_the_estimate_command_prints_stage_by_stage(tmp_path, capsys):
    from clcplus_ops.cli import main

    rates = tmp_path / "rates.json"
    for stage, seconds in (("ingest", 40.0), ("classify", 6.0), ("filter", 1.0)):
        cost.record_rate(cost.Rate(stage, cpu_seconds_per_mpx=seconds, bytes_per_mpx=cost.MIB,
                                   measured_by=f"scripts/bench_{stage}.py", detail=f"{stage} timed"), rates)
    assert main(["estimate", "--rates", str(rates), "--cpu-workers", "50", "--cores-per-worker", "8"]) == 0
    out = capsys.readouterr().out
    assert "16,406 PU-tiles" in out and "12,278 distinct tiles" in out
    counts = cost.layout_counts(load_config(), "production")
    expected = (40 * 12_278 * 2516 ** 2 / 1e6 + 7 * counts.classified_mpx) / 3600
    assert f"ingestion, classification and filtering on CPUs: {expected:,.0f} core-hours" in out
    assert "NOT met" in out  # these made-up rates are above the target
    assert "ingest: 40.000 CPU s/Mpx" in out and "scripts/bench_ingest.py" in out and "ingest timed" in out
    assert "not measured: run scripts/bench_pu.py" in out
    assert "wall time on 50 CPU worker(s) of 8 cores" in out
    json.loads(rates.read_text())  # a plain JSON file the benchmarks share
