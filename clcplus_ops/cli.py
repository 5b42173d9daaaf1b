"""The ``clcplus`` command: every stage and report runs here without a scheduler."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from clcplus_ops.config import ConfigError, load_config


def _config(args):
    return load_config(args.config)


def cmd_config_show(args) -> int:
    sys.stdout.write(_config(args).to_yaml())
    return 0


def cmd_grid_report(args) -> int:
    from clcplus_ops.geo.grid_report import product_tile_report

    config = _config(args)
    report = product_tile_report(config.grid.aoi_buffer_m)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"100 km tiles covering EEA38+UK (AOI buffered {config.grid.aoi_buffer_m:g} m): {report['computed']}")
    print(f"official CLCplus 2023 tile codes: {report['official']}")
    print(f"matching: {report['matching']}; official but not computed: {len(report['missing'])}; "
          f"computed but not official: {len(report['extra'])}")
    for reason, codes in report["missing_by_reason"].items():
        print(f"  missing, {reason}: {len(codes)}: {' '.join(codes)}")
    for reason, codes in report["extra_by_reason"].items():
        print(f"  extra, {reason}: {len(codes)}: {' '.join(codes)}")
    for name, cells in report["excluded_territories"].items():
        print(f"  not in the AOI: {name} ({cells['cells']} cells, {cells['official']} of them official)")
    print(f"plus the 5 French DOMs as whole-territory tiles: {', '.join(report['doms'])}")
    return 0


def cmd_layout_report(args) -> int:
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.tile_index import tile_index

    config = _config(args)
    path = config.layout_path(args.layout)
    grid = config.for_layout(args.layout).grid
    units = load_layout(path)
    areas = [u.area_km2 for u in units.values()]
    start = time.perf_counter()
    tiles = tile_index(path, grid)
    counts = [len(tiles[p]) for p in units]
    print(f"layout {args.layout}: {path}")
    print(f"production units: {len(units)}; total area {sum(areas):,.0f} km2 (ATBD coverage: 6,002,105 km2)")
    groups = {"EPSG:3035 (mainland)": [u.area_km2 for u in units.values() if u.crs == "EPSG:3035"],
              "UTM (overseas departments)": [u.area_km2 for u in units.values() if u.crs != "EPSG:3035"]}
    for label, group in groups.items():
        if group:
            print(f"  {len(group)} PUs in {label}: area km2 min {min(group):,.0f}, median "
                  f"{statistics.median(group):,.0f}, max {max(group):,.0f} (max/min {max(group) / min(group):.2f})")
    print(f"tiles of {grid.tile_size_m / 1000:g} km per PU (buffer {grid.pu_buffer_m / 1000:g} km): "
          f"min {min(counts)}, median {statistics.median(counts):g}, max {max(counts)}, total {sum(counts)} "
          f"(tile index in {time.perf_counter() - start:.1f} s)")
    if args.verbose:
        for pu_id, unit in units.items():
            print(f"  {pu_id:8s} {unit.area_km2:>12,.0f} km2 {len(tiles[pu_id]):>4d} tiles  {unit.crs:11s} {unit.name}")
    return 0


def cmd_tiles(args) -> int:
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.tiles import tiles_for_pu
    from clcplus_ops.locations import check_pu

    config = _config(args)
    check_pu(config, args.layout, args.pu_id)
    units = load_layout(config.layout_path(args.layout))
    grid = config.for_layout(args.layout).grid
    for tile in tiles_for_pu(units[args.pu_id], grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m):
        print(tile.tile_id, tile.crs, *tile.bounds)
    return 0


# --------------------------------------------------------------------------------------------
# Stages: every one runs through the runner (clcplus_ops.runner.run_stage)


def _pipeline():
    from clcplus_ops import pipeline

    return pipeline


def _run(args, stage, target, options: dict | None = None) -> dict:
    """Run ``stage`` for ``target`` through the runner with ``--force``; its summary."""
    from clcplus_ops.runner import run_stage

    return run_stage(stage, _config(args), target, force=getattr(args, "force", False), options=options or {})


def _target(args, tile_id: str | None = None):
    from clcplus_ops.stage import Target

    return Target(args.layout, args.year, args.pu_id, tile_id)


def _print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str))


def cmd_plan(args) -> int:
    summary = _run(args, _pipeline().STAGES["plan_tiles"], _target(args), {"only_tiles": args.only_tiles or []})
    print(f"{summary['tiles']} tiles planned: {summary['outputs']['plan']}" + (" (current, kept)" if summary["skipped"] else ""))
    return 0


def cmd_synthetic_build(args) -> int:
    from clcplus_ops.locations import check_year
    from clcplus_ops.synthetic import build_world

    config = _config(args)
    record = build_world(config, check_year(config, args.year), force=args.force)
    state = "was current (kept)" if record["skipped"] else "built"
    print(f"synthetic world {args.year} {state}: {record['items']} STAC items, catalogue {record['catalog_url']}")
    return 0


def _tile_command(name: str):
    """``clcplus ingest|classify|filter PU YEAR TILE``: the tile stage ``name``."""

    def command(args) -> int:
        from clcplus_ops.runner import run_stage

        stages, target, options = _pipeline().STAGES, _target(args, args.tile_id), {}
        if getattr(args, "model_version", None):
            options["model_version"] = _model_version(args.model_version)
        _print_summary(_run(args, stages[name], target, options))
        return 0

    command.__name__ = f"cmd_{name}"
    return command


cmd_ingest = _tile_command("ingest")
cmd_classify = _tile_command("classify")
cmd_filter = _tile_command("filter")


def _model_version(version: str) -> str:
    from clcplus_ops.locations import check_version

    return version if version == "latest" else check_version(version)


def _parse_option(text: str) -> tuple[str, object]:
    """``key=value``; the value is read as JSON where it is JSON (numbers, lists, true, null)."""
    from clcplus_ops.errors import ClcplusError

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ClcplusError(f"--option {text!r} is not key=value")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def cmd_run(args) -> int:
    """Any declared stage for one target (iota2-style: every step re-runnable by hand)."""
    from clcplus_ops.errors import ClcplusError
    from clcplus_ops.stage import TILE_SCOPES, Target

    stages = _pipeline().STAGES
    if args.stage not in stages:
        raise ClcplusError(f"no stage {args.stage!r}; the declared stages are {', '.join(stages)}")
    stage = stages[args.stage]
    options = dict(_parse_option(text) for text in args.option or [])
    unknown = sorted(set(options) - set(stage.options))
    if unknown:
        accepted = ", ".join(stage.options) or "none"
        raise ClcplusError(f"stage {stage.name} takes no option {', '.join(map(repr, unknown))} (its options: {accepted})")
    if "model_version" in options and options["model_version"] is not None:
        options["model_version"] = _model_version(str(options["model_version"]))
    if stage.scope in TILE_SCOPES and not args.tile_id:
        raise ClcplusError(f"stage {stage.name} runs for a tile: give PU YEAR TILE (a product tile: its code, e.g. "
                           "e44n36, after the PU whose run makes it)")
    if stage.scope in ("pu", "training") and args.tile_id:
        raise ClcplusError(f"stage {stage.name} runs for a production unit, not a tile: give PU YEAR")
    pu_id = None if stage.scope == "sample_tile" else args.pu_id  # a tile's samples belong to no PU

    _print_summary(_run(args, stage, Target(args.layout, args.year, pu_id, args.tile_id), options))
    return 0


def cmd_stages(args) -> int:
    """The declared stages, in the order data flows."""
    config = _config(args)
    for stage in _pipeline().STAGES.values():
        outputs = ", ".join(stage.output_files(config).values())
        inputs = ", ".join(stage.inputs) or "-"
        options = f"; options: {', '.join(stage.options)}" if stage.options else ""
        print(f"{stage.name:22s} {stage.scope:11s} inputs: {inputs}; outputs: {outputs}{options}")
    return 0


def cmd_products(args) -> int:
    """The delivery of a reference year: per product tile its revision, area per class,
    self-check and publication."""
    from clcplus_ops.locations import Locations, check_year
    from clcplus_ops.products.summary import delivery_summary

    config = _config(args)
    year = check_year(config, args.year)
    summary = delivery_summary(config, args.layout, year)
    print(f"delivery {year} ({args.layout} layout) under {Locations(config.for_layout(args.layout)).delivery}: "
          f"{len(summary)} product tiles")
    return 1 if _print_delivery(summary, config.codes.classes) else 0


def cmd_previous_import(args) -> int:
    """An external production (11-band probability GeoTIFF, any grid) as a PU's production of
    its reference year, for the calibration of later years."""
    stage = _pipeline().STAGES["import_production"]
    summary = _run(args, stage, _target(args), {"source": args.file})
    state = "current, kept" if summary["skipped"] else "imported"
    print(f"{args.pu_id} {args.year} production {state}: {summary['outputs']['probabilities']} "
          f"({summary.get('pixels_valid', 0):,} px with probabilities; source scale {summary.get('scale')})")
    return 0


def cmd_samples_import(args) -> int:
    from clcplus_ops.locations import Locations
    from clcplus_ops.model.sample_db import import_samples
    from clcplus_ops.runner import store_for

    config = _config(args)
    summary = import_samples(store_for(config), Locations(config).sample_db, args.file, author=args.author,
                             layer=args.layer)
    print(f"{summary.rows} rows: {summary.added} added, {summary.relabelled} relabelled, {summary.unchanged} unchanged"
          + (f"; batch {summary.url}" if summary.url else "; nothing written"))
    return 0


def cmd_samples_history(args) -> int:
    from clcplus_ops.errors import ClcplusError
    from clcplus_ops.locations import Locations
    from clcplus_ops.model.sample_db import load_sample_db
    from clcplus_ops.runner import store_for

    config = _config(args)
    db = load_sample_db(store_for(config), Locations(config).sample_db)
    try:
        history = db.history(args.sample_id)
    except KeyError as error:
        raise ClcplusError(error.args[0]) from error
    columns = [c for c in ("revision", "label", "status", "reason", "author", "created", "batch_id") if c in history]
    print(history[columns].to_string(index=False))
    return 0


# ``clcplus train NAME``: the training stages as the training DAG runs them (NAME -> stage).
TRAINING_STAGES = {"extract": "extract", "audit": "audit", "review": "review", "evaluate": "evaluate",
                   "fit": "final_fit", "register": "register"}


def cmd_train(args) -> int:
    stage = _pipeline().STAGES[TRAINING_STAGES[args.stage]]
    options = {}
    if args.stage == "review":
        from clcplus_ops.model.stages import check_reviewer
        from clcplus_ops.runner import checked_target
        from clcplus_ops.store import as_url

        # Who reviews is checked before anything of the review is read (the stage checks it too).
        config = _config(args).for_layout(args.layout)
        check_reviewer(config, checked_target(config, stage, _target(args)), args.reviewer)
        decisions = as_url(args.decisions) if args.decisions else None  # a path or a store URL
        options = {"choice": args.choice, "decisions_url": decisions, "reviewer": args.reviewer}
    _print_summary(_run(args, stage, _target(args), options))
    return 0


def _registry_pu(config, pu_id: str) -> str:
    """A PU id of the production or the demo layout (registries hold both)."""
    from clcplus_ops.errors import InvalidIdError
    from clcplus_ops.locations import check_pu

    errors = []
    for layout in config.LAYOUTS:
        try:
            return check_pu(config, layout, pu_id)
        except InvalidIdError as error:
            errors.append(str(error))
    raise InvalidIdError("; ".join(errors))


def cmd_models(args) -> int:
    from clcplus_ops.locations import Locations
    from clcplus_ops.model import registry
    from clcplus_ops.runner import store_for

    config = _config(args)
    store, models = store_for(config), Locations(config).models
    pu_id = _registry_pu(config, args.pu_id)
    if args.action == "list":
        for version in registry.list_versions(store, models, pu_id):
            card = registry.resolve_model(store, models, pu_id, version).card
            oa = card.get("metrics", {}).get("overall_accuracy")
            print(f"{version}  {card['created']}  reference year {card.get('reference_year')}  "
                  f"hold-out OA {oa:.1%}" if oa is not None else f"{version}  {card['created']}")
        return 0
    version = _model_version(args.version) if args.version else None
    model = registry.resolve_model(store, models, pu_id, version)
    # The card as registered (MODEL_CARD.md is this rendering of model_card.json).
    print(registry.render_model_card(model.card, url=model.url))
    return 0


def cmd_estimate(args) -> int:
    """The cost of a whole production from the rates the benchmarks measured here."""
    from clcplus_ops import estimate as cost

    config = _config(args)
    rates = cost.read_rates(Path(args.rates))
    counts = cost.layout_counts(config, args.layout)
    costs = cost.estimate(counts, rates)
    print(f"estimate: the {args.layout} layout: {counts.pus} PUs, {counts.pu_tiles:,} PU-tiles of "
          f"{counts.tile_mpx:.2f} Mpx (tile plus halo; {counts.classified_mpx / 1e3:,.1f} Gpx of them in their PU's "
          f"buffered area, classified), {counts.distinct_tiles:,} distinct tiles (ingested once), "
          f"{counts.pu_grid_mpx / 1e3:,.1f} Gpx of PU product grids, {counts.product_tiles} product tiles of 100 km")
    print(f"estimate: rates from {Path(args.rates).resolve()}")
    print(f"  {'stage':<20} {'runs':>8} {'Mpx':>12} {'CPU s/Mpx':>10} {'core-h':>9} {'GPU-h':>7} {'TiB':>7} "
          f"{'PUT':>9} {'GET+HEAD':>10}")
    missing = []
    for c in costs:
        if c.rate is None:
            missing.append(c)
            print(f"  {c.stage:<20} {c.runs:>8,.0f} {c.mpx:>12,.0f}   not measured: run {cost.STAGES[c.stage]}")
            continue
        gpu = f"{c.gpu_hours:>7.1f}" if c.gpu_hours is not None else f"{'-':>7}"
        print(f"  {c.stage:<20} {c.runs:>8,.0f} {c.mpx:>12,.0f} {c.rate.cpu_seconds_per_mpx:>10.3f} "
              f"{c.core_hours:>9,.0f} {gpu} {c.written_tib:>7.2f} {c.puts:>9,.0f} {c.gets:>10,.0f}")
    tile = [c for c in costs if c.stage in cost.TILE_STAGES]
    if all(c.core_hours is not None for c in tile):
        total = sum(c.core_hours for c in tile)
        print(f"estimate: ingestion, classification and filtering on CPUs: {total:,.0f} core-hours "
              f"({' + '.join(f'{c.stage} {c.core_hours:,.0f}' for c in tile)}; target <= 1,000: "
              f"{'met' if total <= 1000 else 'NOT met'})")
    measured = [c for c in costs if c.core_hours is not None]
    if measured:
        print(f"estimate: all measured stages: {sum(c.core_hours for c in measured):,.0f} core-hours, "
              f"{sum(c.written_tib for c in measured):,.2f} TiB written, {sum(c.puts for c in measured) / 1e6:,.2f} M PUT "
              f"and {sum(c.gets for c in measured) / 1e6:,.2f} M GET/HEAD requests (modelled)")
        wall = cost.wall_hours(costs, args.cpu_workers, args.cores_per_worker, args.gpus)
        if args.gpus and not any(c.stage == "classify" and c.gpu_hours is not None for c in costs):
            print("estimate: no GPU rate measured (scripts/bench_inference.py on a GPU machine): classification "
                  "stays on the CPUs in the wall time")
        print(f"estimate: wall time on {args.cpu_workers} CPU worker(s) of {args.cores_per_worker} cores"
              f"{f' and {args.gpus} GPU(s)' if args.gpus else ''}: {wall.pop('total'):,.1f} h ("
              + ", ".join(f"{stage} {hours:,.1f} h" for stage, hours in wall.items()) + ")")
    print("estimate: the rates used:")
    for c in measured:
        print(f"  {c.stage}: {c.rate.describe()}")
    if missing:
        print(f"estimate: {len(missing)} stage(s) not measured on this machine and left out of the totals: "
              + ", ".join(c.stage for c in missing))
    return 0


def cmd_demo(args) -> int:
    import signal

    from clcplus_ops.embedded import AirflowApi, AirflowServices, airflow_env, free_port, server_env, write_embedded_config
    from clcplus_ops.geo.layout import layout_index

    repo, home = Path(args.repo).resolve(), Path(args.home).resolve()
    if not (repo / "dags").is_dir():
        print(f"error: {repo} has no dags/ folder; run from the repository root or pass --repo", file=sys.stderr)
        return 2
    if args.fresh and home.exists():
        # Start over, except for the synthetic world and the registered models: both are
        # deterministic and take the longest to make, so they are made once and reused (the
        # world rebuilds itself if its inputs change; delete store/models to retrain).
        kept = {home / "store" / "synthetic", home / "store" / "models"}
        for path in home.iterdir():
            if path.name == "store":
                for part in path.iterdir():
                    if part not in kept:
                        shutil.rmtree(part) if part.is_dir() else part.unlink()
            else:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    # The demo runs on a real Airflow (scheduler, DAG processor, triggerer and API server on
    # 127.0.0.1, LocalExecutor, SQLite). Both PUs of a year run at once; a blend waiting for its
    # neighbour's mosaic defers to the triggerer. The previous reference year comes first, so the
    # current one is calibrated against it. Classification runs in the "gpu" pool it creates.
    config_path = write_embedded_config(home, home / "config.yaml", {
        "blending": {"neighbour_timeout_minutes": 20, "neighbour_poll_seconds": 5},
        "calibration": {"previous_productions": 1},
        "inference": {"airflow_pool": args.gpu_pool},
        # Only the demo layout's DAGs; the demo triggers each reference year itself, in order.
        "airflow": {"layouts": ["demo"], "scheduled_runs": False}})
    port = args.port or free_port()
    env = server_env(airflow_env(home, repo, config_path), port, parallelism=args.parallelism)
    env.setdefault("PYTHONWARNINGS", "ignore")  # library deprecation chatter hides the demo's output
    airflow = str(Path(sys.executable).with_name("airflow"))
    started = time.perf_counter()
    print(f"demo: Airflow home {env['AIRFLOW_HOME']} (SQLite, LocalExecutor), store {home / 'store'}")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([airflow, "pools", "set", args.gpu_pool, str(args.gpu_slots),
                    "Classification (GPU workers in production)"], env=env, check=True, stdout=subprocess.DEVNULL)
    config = load_config(config_path)
    from clcplus_ops.postprocessing.calibration import previous_years
    from clcplus_ops.synthetic import build_world

    earlier = args.previous_year or previous_years(config, args.year)[-1]
    years = [earlier, args.year]
    worlds = {}
    for year in years:
        worlds[year] = build_world(config, year)
        print(f"demo: synthetic Sentinel-2 world {year} {'reused' if worlds[year]['skipped'] else 'generated'}: "
              f"{worlds[year]['items']} scenes in {worlds[year]['catalog_url']}")
    units = [u["pu_id"] for u in layout_index(config.layout_path("demo"))]
    from clcplus_ops import demo
    from clcplus_ops.runner import store_for

    store = store_for(config)
    # One sample set (the current year's world's) for every year's model, each trained with its
    # own year's time series: the years' maps are equally good, as their calibration assumes.
    samples = [worlds[args.year]["samples_csv_url"]]
    models = {}
    for year in years:
        # Each production classifies with its own year's model, as in a real production.
        for model in demo.ensure_models(config, year, units, samples):
            how = "trained on the synthetic samples" if model["trained"] else "registered earlier, reused"
            print(f"demo: {model['pu_id']} model {model['version']} of {year} ({how}; hold-out overall accuracy "
                  f"{100 * model['overall_accuracy']:.1f} %)")
            models.setdefault(year, {})[model["pu_id"]] = model["version"]
    services = AirflowServices(env, airflow, home / "airflow" / "services")
    # SIGTERM (a supervisor, `kill`) stops the Airflow processes as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        services.start()
        print(f"demo: Airflow UI {services.url} (user admin, password {services.password}); Airflow's processes "
              f"{services.pids()}, logs in {services.log_dir}")
        api = AirflowApi(services.url, "admin", services.password)
        api.wait_for_dags([f"clcplus_pu_{u}" for u in units])
        for year in years:
            code = _demo_year(config, year, units, worlds[year], api, store, models[year],
                              detailed=year == args.year)
            if code:
                return code
        _demo_calibration(config, args.year, earlier, units, {y: worlds[y]["truth_url"] for y in years}, store)
        print(f"demo: finished in {time.perf_counter() - started:.0f} s")
        if args.keep_ui:
            print(f"demo: the UI stays up at {services.url} (user admin, password {services.password}); Ctrl-C stops it")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        services.stop()
        print(f"demo: Airflow stopped ({', '.join(services.components)})")
    return 0


def _demo_year(config, year: int, units: list[str], world: dict, api, store, models: dict, detailed: bool) -> int:
    """One reference year of the demo on the running Airflow: every PU's run at once, watched
    until done, then the tiles' and the PUs' figures."""
    from clcplus_ops import demo
    from clcplus_ops.locations import Locations
    from clcplus_ops.pipeline import BLEND, CLASSIFY, INGEST
    from clcplus_ops.runner import stage_record
    from clcplus_ops.stage import Target

    print(f"demo: triggering {', '.join(f'clcplus_pu_{u}' for u in units)} for reference year {year}: ingest, "
          f"classify, filter every tile, then mosaic, wait for the neighbours, blend, calibrate, recode, layers, and "
          f"the 100 km product tiles whose PUs all have final layers (product tile, metadata, STAC, self-check, "
          f"publish)")
    # The logical date is the day the acquisition window closed.
    runs = {pu: (f"clcplus_pu_{pu}", api.trigger(f"clcplus_pu_{pu}", f"{year + 1}-04-01T00:00:00Z",
                                                 {"model_version": models[pu]})) for pu in units}
    if _watch(api, runs, year):
        return 1
    # A PU whose wait for a neighbour's mosaic ended before it existed has provisional layers:
    # its blend is cleared (the REST call the UI makes), so it and what follows run again.
    late = [pu for pu in units
            if stage_record(config, BLEND, Target("demo", year, pu), store).details["missing_neighbours"]]
    if late:
        for pu in late:
            print(f"demo: {pu} blended before its neighbours' mosaics existed; clearing its blend and what follows")
            api.clear(*runs[pu], ["blend"])
        if _watch(api, {pu: runs[pu] for pu in late}, year):
            return 1
    locations = Locations(config.for_layout("demo"))
    for pu_id in units:
        place = locations.pu(year, pu_id)
        done = store.read_json(place.tiles_done)
        targets = [Target("demo", year, pu_id, t) for t in done["tiles"]]
        records = [stage_record(config, INGEST, target, store) for target in targets]
        dates = [r.details["dates"] for r in records]
        skipped = sum(r.details["scenes_skipped"] for r in records)
        engines = {stage_record(config, CLASSIFY, target, store).details["engine"]["precision"] for target in targets}
        print(f"demo: {pu_id} {year}: {len(done['tiles'])} tiles ingested ({min(dates)}-{max(dates)} acquisition "
              f"dates per tile, {skipped} scenes skipped), classified ({'/'.join(sorted(engines))}) and filtered "
              f"under {place.base}")
    planned = [t for pu_id in units for t in store.read_json(locations.pu(year, pu_id).tiles_done)["tiles"]]
    print(f"demo: {year}: {len(set(planned))} distinct tiles ingested once for the {len(planned)} tiles the PUs "
          f"planned (a tile in both PUs' areas has one time series, under {locations.tile_series(year, planned[0]).base.rsplit('/', 1)[0]})")
    pixels = correct = correct_raw = 0
    for pu_id in units:
        acc = demo.map_accuracy(config, year, pu_id, world["truth_url"], store)
        print(f"demo: {pu_id} {year} map against the synthetic ground truth ({acc['pixels']:,} px): overall accuracy "
              f"{100 * acc['overall_accuracy_classified']:.2f} % classified, "
              f"{100 * acc['overall_accuracy_filtered']:.2f} % after the bilateral filter "
              f"({100 * acc['changed_by_filter']:.2f} % of pixels changed class)")
        pixels += acc["pixels"]
        correct += acc["overall_accuracy_filtered"] * acc["pixels"]
        correct_raw += acc["overall_accuracy_classified"] * acc["pixels"]
    print(f"demo: {year} overall accuracy of the filtered maps {100 * correct / pixels:.2f} % "
          f"(unfiltered {100 * correct_raw / pixels:.2f} %) over {pixels:,} px")
    _demo_products(config, year, units, world["truth_url"], store, detailed)
    failed = _demo_delivery(config, year, store)
    if failed:
        print(f"demo: {failed} product tile(s) of {year} not published (see above)", file=sys.stderr)
        return 1
    return 0


def _watch(api, runs: dict[str, tuple[str, str]], year: int, every_s: float = 20.0) -> int:
    """Follow DAG runs until they end, printing per PU the tiles done, what runs now, the elapsed
    time and an estimate of the time left; returns the number of runs that failed."""
    from clcplus_ops.embedded import run_progress

    last = 0.0
    while True:
        # The runs' states every 2 s (one small call each); the task instances only to print.
        done = all(api.dag_run(dag_id, run_id)["state"] in ("success", "failed") for dag_id, run_id in runs.values())
        if done or time.monotonic() - last >= every_s:
            progress = {pu: run_progress(api, dag_id, run_id) for pu, (dag_id, run_id) in runs.items()}
            last = time.monotonic()
            for pu, p in progress.items():
                eta = f", about {p['eta_s'] / 60:.0f} min left" if p.get("eta_s") is not None else ""
                print(f"demo:   {pu} {year}: {p['state']}, tiles {p['tiles_done']}/{p['tiles_total']}, "
                      f"now {', '.join(p['running']) or '-'}; {p['elapsed_s'] / 60:.1f} min{eta}", flush=True)
        if done:
            failed = [pu for pu, p in progress.items() if p["state"] == "failed"]
            for pu in failed:
                print(f"demo: clcplus_pu_{pu} {year} failed: {', '.join(progress[pu]['failed'])}", file=sys.stderr)
            return len(failed)
        time.sleep(2)


def _demo_calibration(config, year: int, earlier: int, units: list[str], truth_urls: dict, store) -> None:
    """The calibration and recoding figures of the demo against the truth of both years."""
    from clcplus_ops import demo

    figures = demo.calibration_figures(config, year, earlier, units, truth_urls, store)

    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.1f} %" if b else "-"

    for pu_id, f in figures["pus"].items():
        c = f["calibration"]
        print(f"demo: {pu_id} calibration {year} against {', '.join(map(str, c.get('previous_years', [])))}: "
              f"{c.get('changed', 0):,} px changed class, {c.get('kept', 0):,} kept, {c.get('suppressed', 0):,} "
              f"suppressed; {c.get('from_previous_no_data', 0):,} px without observations took the prior")
        print(f"demo:   {pu_id} against the truth ({f['pixels']:,} px): spurious changes {f['spurious']:,}, suppressed "
              f"{pct(f['spurious_suppressed'], f['spurious'])}; real changes {f['real']:,}, seen by the classification "
              f"{f['real_seen']:,}, kept {pct(f['real_kept'], f['real_seen'])}")
        print(f"demo:   {pu_id} per direction (prior -> blended class): pixels, real (kept), spurious (suppressed)")
        for d in f["directions"][:12]:
            print(f"demo:     {d['from']:>2} -> {d['to']:<2} {d['pixels']:>7,} px  real {d['real']:>6,} "
                  f"({pct(d['real_kept'], d['real'])} kept)  spurious {d['spurious']:>6,} "
                  f"({pct(d['spurious_suppressed'], d['spurious'])} suppressed)")
        if len(f["directions"]) > 12:
            rest = f["directions"][12:]
            print(f"demo:     {len(rest)} more directions, {sum(d['pixels'] for d in rest):,} px")
        r = f["recoding"]
        print(f"demo:   {pu_id} recoding ({r.get('rules_file') or 'no rules'}): "
              + ", ".join(f"{name} {n:,} px" for name, n in (r.get("rules") or {}).items())
              + f"; of the {f['recoded']:,} px recoded, {pct(f['recoded_correct'], f['recoded'])} now correct "
                f"(before: {pct(f['recoded_correct_before'], f['recoded'])})")
        n = f["accuracy_pixels"]
        print(f"demo:   {pu_id} RAS overall accuracy ({n:,} px): after blending {pct(f['correct_blended'], n)}, after "
              f"calibration {pct(f['correct_calibrated'], n)}, after recoding {pct(f['correct_recoded'], n)}")
    t = figures["total"]
    suppressed, kept = t["spurious_suppressed"] / max(t["spurious"], 1), t["real_kept"] / max(t["real_seen"], 1)
    right = t["recoded_correct"] / max(t["recoded"], 1)
    never_lower = t["correct_blended"] <= t["correct_calibrated"] <= t["correct_recoded"]
    print(f"demo: calibration targets: spurious changes suppressed {100 * suppressed:.1f} % (>= 80 %: "
          f"{'OK' if suppressed >= 0.8 else 'MISSED'}), real changes kept {100 * kept:.1f} % (>= 90 %: "
          f"{'OK' if kept >= 0.9 else 'MISSED'})")
    print(f"demo: accuracy never lowered (blended {pct(t['correct_blended'], t['accuracy_pixels'])} <= calibrated "
          f"{pct(t['correct_calibrated'], t['accuracy_pixels'])} <= recoded {pct(t['correct_recoded'], t['accuracy_pixels'])}): "
          f"{'OK' if never_lower else 'MISSED'}; recoded pixels now correct {100 * right:.1f} % (>= 95 %: "
          f"{'OK' if right >= 0.95 else 'MISSED'})")


def _demo_products(config, year: int, units: list[str], truth_url: str, store, detailed: bool = True) -> None:
    """The PU layers part of the demo: each PU's RAS against the truth and the seam between the
    PUs, then the delivery."""
    from clcplus_ops import demo

    figures = demo.pu_products(config, year, units, truth_url, store)
    if not detailed:
        for pu_id, f in figures["pus"].items():
            print(f"demo: {pu_id} {year} RAS over its own area: overall accuracy {100 * f['ras'].overall_accuracy:.2f} % "
                  f"({f['pixels']:,} px); {f['pixels_blended']:,} px blended")
        return
    names = config.codes.classes
    for pu_id, f in figures["pus"].items():
        ras, filtered = f["ras"], f["filtered"]
        print(f"demo: {pu_id} RAS over its own area ({f['own_pixels']:,} px; {f['pixels']:,} px with a class in both "
              f"RAS and the truth): overall accuracy {100 * ras.overall_accuracy:.2f} % (its filtered map on the same "
              f"pixels, unblended: {100 * filtered.overall_accuracy:.2f} %); {f['pixels_blended']:,} px blended with "
              f"{', '.join(f['neighbours']) or 'no neighbour'}; coastal seawater (253) {f['coastal_seawater']:,} px, "
              f"outside area (254) {f['outside']:,} px, no data (255) {f['nodata']:,} px, "
              f"{f['nodata_filled']:,} px without observations filled from their neighbourhood")
        for code in ras.classes:
            if ras.support[code] or ras.commission[code] is not None:
                om, co = ras.omission[code], ras.commission[code]
                print(f"demo:   {pu_id} class {code:2d} {names[code]:<34} reference {ras.support[code]:>8,} px  "
                      f"omission {'-' if om is None else f'{100 * om:5.1f} %'}  "
                      f"commission {'-' if co is None else f'{100 * co:5.1f} %'}")
    seam = figures.get("seam")
    if seam:
        def pct(layer: str, key: str) -> str:
            return f"{100 * seam[layer][key]:.1f} %"

        print(f"demo: seam {units[0]}|{units[1]}: class changes between pixel pairs across the border vs 1 km inside "
              f"either PU vs 1-10 px beside the border ({seam['pairs_across']:,} / {seam['pairs_inside']:,} / "
              f"{seam['pairs_beside']:,} land pairs): before blending {pct('before', 'across')} vs "
              f"{pct('before', 'inside')} vs {pct('before', 'beside')}, after blending {pct('after', 'across')} vs "
              f"{pct('after', 'inside')} vs {pct('after', 'beside')}; the synthetic truth {pct('truth', 'across')} vs "
              f"{pct('truth', 'inside')} vs {pct('truth', 'beside')}")
        print(f"demo: seam {units[0]}|{units[1]}: changes where the truth has none, across vs 1 km inside vs beside: "
              f"before blending {pct('before', 'spurious_across')} vs {pct('before', 'spurious_inside')} vs "
              f"{pct('before', 'spurious_beside')}, after {pct('after', 'spurious_across')} vs "
              f"{pct('after', 'spurious_inside')} vs {pct('after', 'spurious_beside')}")


def _print_delivery(summary: list[dict], names: dict[int, str]) -> int:
    """Print a delivery summary (:func:`clcplus_ops.products.summary.delivery_summary`); returns
    the number of tiles that are not published."""
    not_published = 0
    for tile in summary:
        code = tile["tile"].upper()
        if "revision" not in tile:
            waiting = "; ".join(f"{pu}: {why}" for pu, why in tile["waiting_for"].items())
            print(f"  {code}: not made yet ({tile['state']}{': ' + waiting if waiting else ''})")
            not_published += 1
            continue
        check = tile.get("check_passed")
        validity = ("" if check is None else f"; {tile['metadata_valid']} of {tile['files_checked']} INSPIRE records "
                    f"and {tile['stac_items_valid']} of {tile['files_checked']} STAC items valid")
        check_text = ("not checked" if check is None else
                      f"self-check passed ({tile['rules_checked']} rules on {tile['files_checked']} files{validity})"
                      if check else f"self-check FAILED{validity}: {'; '.join(tile['check_failed'])}")
        print(f"  {code} R{tile['revision']:02d} ({tile['state']}; made by {tile['claimed_by']}'s run from "
              f"{', '.join(tile['pus'])}): {tile['pixels_delivered']:,} px delivered; {check_text}")
        total = sum(tile["area_km2"].values())
        for value, km2 in sorted(tile["area_km2"].items(), key=lambda kv: int(kv[0])):
            label = names.get(int(value), {253: "Coastal seawater", 255: "No data"}.get(int(value), "?"))
            print(f"      {int(value):>3} {label:<34} {km2:>10.2f} km2  {100 * km2 / total:5.1f} %")
        if tile["state"] == "published":
            print(f"      manifest {tile['manifest']}")
        else:
            not_published += 1
    return not_published


def _demo_delivery(config, year: int, store) -> int:
    """Where the year's delivery is and a summary per product tile; returns the tiles not published."""
    from clcplus_ops.locations import Locations
    from clcplus_ops.products.summary import delivery_summary

    summary = delivery_summary(config, "demo", year, store)
    print(f"demo: delivery {year} published under {Locations(config.for_layout('demo')).delivery} "
          f"({len(summary)} product tiles of 100 km):")
    return _print_delivery(summary, config.codes.classes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clcplus", description="CLCplus Backbone production system")
    parser.add_argument("--config", help="configuration YAML (default: $CLCPLUS_CONFIG, else built-in defaults)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="the effective configuration").add_subparsers(dest="action", required=True)
    config.add_parser("show", help="print the effective configuration as YAML").set_defaults(func=cmd_config_show)

    grid = sub.add_parser("grid", help="product grid").add_subparsers(dest="action", required=True)
    report = grid.add_parser("report", help="100 km tiles over the AOI vs the official tile codes")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_grid_report)

    layout = sub.add_parser("layout", help="production-unit layout").add_subparsers(dest="action", required=True)
    lreport = layout.add_parser("report", help="PU count, areas and tiles per PU")
    lreport.add_argument("--layout", default="production", choices=("production", "demo"))
    lreport.set_defaults(func=cmd_layout_report)

    tiles = sub.add_parser("tiles", help="list the processing tiles of a PU")
    tiles.add_argument("pu_id")
    tiles.add_argument("--layout", default="production", choices=("production", "demo"))
    tiles.set_defaults(func=cmd_tiles)

    plan = sub.add_parser("plan", help="plan a PU's tiles for a reference year (writes plan.json)")
    plan.add_argument("pu_id")
    plan.add_argument("year", help="reference year")
    plan.add_argument("--layout", default="production", choices=("production", "demo"))
    plan.add_argument("--only-tiles", nargs="*")
    plan.set_defaults(func=cmd_plan)

    synthetic = sub.add_parser("synthetic", help="the synthetic Sentinel-2 world").add_subparsers(dest="action", required=True)
    build = synthetic.add_parser("build", help="generate the world of a reference year (scenes, truth, samples)")
    build.add_argument("year", type=int)
    build.add_argument("--force", action="store_true", help="rebuild even if it is current")
    build.set_defaults(func=cmd_synthetic_build)

    for name, func, text in (("ingest", cmd_ingest, "build one tile's Sentinel-2 time series"),
                             ("classify", cmd_classify, "classify one tile with its PU's registered model"),
                             ("filter", cmd_filter, "bilateral filter of one tile's class probabilities")):
        stage = sub.add_parser(name, help=f"{text} (the {name} stage)")
        stage.add_argument("pu_id")
        stage.add_argument("year", help="reference year")
        stage.add_argument("tile_id")
        stage.add_argument("--layout", default="production", choices=("production", "demo"))
        stage.add_argument("--force", action="store_true", help="recompute even if the recorded outputs are current")
        if name == "classify":
            stage.add_argument("--model-version", help="registered version, e.g. v0002 (default: the latest)")
        stage.set_defaults(func=func)

    run = sub.add_parser("run", help="run any declared stage for one target (see `clcplus stages`)")
    run.add_argument("stage", help="stage name, e.g. ingest, classify, filter, plan_tiles")
    run.add_argument("pu_id", help="production unit (any, e.g. '-', for a tile's sample series: they belong to no PU)")
    run.add_argument("year", help="reference year")
    run.add_argument("tile_id", nargs="?", help="processing tile (tile stages) or product tile code (product stages)")
    run.add_argument("--layout", default="production", choices=("production", "demo"))
    run.add_argument("--force", action="store_true", help="recompute even if the recorded outputs are current")
    run.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="a run option of the stage (repeatable; VALUE is read as JSON where it is JSON)")
    run.set_defaults(func=cmd_run)
    sub.add_parser("stages", help="the declared stages: scope, inputs, outputs, options").set_defaults(func=cmd_stages)

    samples = sub.add_parser("samples", help="the sample DB (points, labels, revisions)").add_subparsers(dest="action", required=True)
    simport = samples.add_parser("import", help="import sample points from CSV or GeoPackage")
    simport.add_argument("file", help="path or store URL of a .csv (sample_id,label,lon,lat | x,y,epsg) or .gpkg")
    simport.add_argument("--author", default="import")
    simport.add_argument("--layer", help="GeoPackage layer (default: the first)")
    simport.set_defaults(func=cmd_samples_import)
    shistory = samples.add_parser("history", help="the revisions of one sample")
    shistory.add_argument("sample_id")
    shistory.set_defaults(func=cmd_samples_history)

    products = sub.add_parser("products", help="the delivery of a reference year: product tiles, revisions, "
                                                "self-check, publication")
    products.add_argument("year", help="reference year")
    products.add_argument("--layout", default="production", choices=("production", "demo"))
    products.set_defaults(func=cmd_products)

    previous = sub.add_parser("previous", help="previous productions for the interannual calibration").add_subparsers(
        dest="action", required=True)
    pimport = previous.add_parser("import", help="import an external production (11-band probability GeoTIFF on any "
                                                 "grid) as a PU's production of a reference year")
    pimport.add_argument("file", help="path or store URL of the GeoTIFF (band i = class i; floats 0-1 or integers "
                                      "scaled to 100, 255 or 10000)")
    pimport.add_argument("pu_id")
    pimport.add_argument("year", help="the production's reference year")
    pimport.add_argument("--layout", default="production", choices=("production", "demo"))
    pimport.add_argument("--force", action="store_true")
    pimport.set_defaults(func=cmd_previous_import)

    train = sub.add_parser("train", help="one training stage of a PU (as the training DAG runs them)")
    train.add_argument("stage", choices=TRAINING_STAGES)
    train.add_argument("pu_id")
    train.add_argument("year", help="reference year of the sample time series")
    train.add_argument("--layout", default="production", choices=("production", "demo"))
    train.add_argument("--force", action="store_true")
    train.add_argument("--choice", default="keep", choices=("accept", "keep", "decisions"), help="review: the expert's choice")
    train.add_argument("--decisions", help="review: URL or path of the decisions CSV (with --choice decisions)")
    train.add_argument("--reviewer", default="expert", help="review: who decided (one of training.reviewers)")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    mlist = models.add_parser("list", help="registered versions of a PU's model")
    mlist.add_argument("pu_id")
    mlist.set_defaults(func=cmd_models)
    mshow = models.add_parser("show", help="the model card of a version (latest by default)")
    mshow.add_argument("pu_id")
    mshow.add_argument("--version")
    mshow.set_defaults(func=cmd_models)

    est = sub.add_parser("estimate", help="core-hours, wall time, storage and S3 requests of a whole production, "
                                          "from the rates the benchmark scripts measured")
    est.add_argument("--layout", default="production", choices=["production", "demo"])
    est.add_argument("--rates", default=".bench/rates.json", help="the rates file the benchmark scripts write")
    est.add_argument("--cpu-workers", type=int, default=100, help="CPU workers (default 100)")
    est.add_argument("--cores-per-worker", type=int, default=len(os.sched_getaffinity(0)),
                     help="cores of each (default: this machine's)")
    est.add_argument("--gpus", type=int, default=0, help="GPUs for classification (their measured rate)")
    est.set_defaults(func=cmd_estimate)
    demo = sub.add_parser("demo", help="run the demo production on the embedded default")
    demo.add_argument("--home", default=".demo", help="folder for Airflow home, config and store")
    demo.add_argument("--repo", default=".", help="repository root holding dags/ and plugins/")
    demo.add_argument("--year", type=int, default=2025)
    demo.add_argument("--previous-year", type=int, help="the reference year produced first and calibrated against "
                                                        "(default: the one before --year)")
    demo.add_argument("--fresh", action="store_true", help="start over (the synthetic world and the registered models are kept and reused)")
    demo.add_argument("--keep-ui", action="store_true", help="leave Airflow and its UI running when the production is done "
                                                             "(Ctrl-C stops them)")
    demo.add_argument("--port", type=int, help="the API server's port on 127.0.0.1 (default: a free one)")
    demo.add_argument("--parallelism", type=int, default=4, help="task processes at once (LocalExecutor)")
    demo.add_argument("--gpu-pool", default="gpu", help="the pool classification runs in")
    demo.add_argument("--gpu-slots", type=int, default=1, help="slots of that pool")
    demo.set_defaults(func=cmd_demo)
    return parser


def expected_error(error: BaseException) -> bool:
    """Whether ``error`` is one an operator is expected to meet (printed as one line)."""
    from clcplus_ops.errors import ClcplusError

    return isinstance(error, ClcplusError | ConfigError | FileNotFoundError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a configuration error lists its fields after a colon)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head, rest = lines[0], lines[1:]
    return head + (" " + "; ".join(rest) if rest else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as error:
        if not expected_error(error):
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
