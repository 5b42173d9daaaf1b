"""The ``clcplus`` command: every stage and report runs here without a scheduler."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
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

    config = _config(args)
    units = load_layout(config.layout_path(args.layout))
    if args.pu_id not in units:
        print(f"error: no production unit {args.pu_id!r} in the {args.layout} layout", file=sys.stderr)
        return 2
    grid = config.for_layout(args.layout).grid
    for tile in tiles_for_pu(units[args.pu_id], grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m):
        print(tile.tile_id, tile.crs, *tile.bounds)
    return 0


def cmd_plan(args) -> int:
    from clcplus_ops.plan import plan_tiles

    plan = plan_tiles(_config(args), args.layout, args.pu_id, args.year, args.only_tiles)
    print(f"{len(plan.tiles)} tiles planned: {plan.plan_url}")
    return 0


def cmd_synthetic_build(args) -> int:
    from clcplus_ops.synthetic import build_world

    record = build_world(_config(args), args.year, force=args.force)
    state = "was current (kept)" if record["skipped"] else "built"
    print(f"synthetic world {args.year} {state}: {record['items']} STAC items, catalogue {record['catalog_url']}")
    return 0


def _tile_stage(args, run, errors: tuple[type[Exception], ...]) -> int:
    """Run one tile stage ``run(config, tile)`` for the tile named in ``args``; print its summary."""
    from clcplus_ops.geo.tiles import tile_from_id

    config = _config(args).for_layout(args.layout)
    tile = tile_from_id(args.tile_id, config.grid.tile_size_m, config.grid.pixel_size_m)
    try:
        result = run(config, tile)
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_ingest(args) -> int:
    from clcplus_ops.sentinel2.ingest import NoScenesError, ingest_tile

    return _tile_stage(args, lambda config, tile: ingest_tile(config, args.pu_id, args.year, tile, force=args.force),
                       (NoScenesError,))


def cmd_classify(args) -> int:
    from clcplus_ops.classification.classify import ClassifyError, classify_tile
    from clcplus_ops.model.registry import ModelNotFoundError

    return _tile_stage(args, lambda config, tile: classify_tile(config, args.pu_id, args.year, tile, args.model_version,
                                                                force=args.force), (ClassifyError, ModelNotFoundError))


def cmd_filter(args) -> int:
    from clcplus_ops.postprocessing.filtering import FilterError, filter_tile_probabilities

    return _tile_stage(args, lambda config, tile: filter_tile_probabilities(config, args.pu_id, args.year, tile,
                                                                            force=args.force), (FilterError,))


def cmd_samples_import(args) -> int:
    from clcplus_ops.model.sample_db import SampleDBError, import_samples
    from clcplus_ops.model.stages import sample_db_url
    from clcplus_ops.plan import store_for

    config = _config(args)
    try:
        summary = import_samples(store_for(config), sample_db_url(config), args.file, author=args.author,
                                 layer=args.layer)
    except SampleDBError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{summary.rows} rows: {summary.added} added, {summary.relabelled} relabelled, {summary.unchanged} unchanged"
          + (f"; batch {summary.url}" if summary.url else "; nothing written"))
    return 0


def cmd_samples_history(args) -> int:
    from clcplus_ops.model.sample_db import load_sample_db
    from clcplus_ops.model.stages import sample_db_url
    from clcplus_ops.plan import store_for

    config = _config(args)
    db = load_sample_db(store_for(config), sample_db_url(config))
    try:
        history = db.history(args.sample_id)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    columns = [c for c in ("revision", "label", "status", "reason", "author", "created", "batch_id") if c in history]
    print(history[columns].to_string(index=False))
    return 0


TRAINING_STAGES = ("extract", "audit", "review", "evaluate", "fit", "register")


def cmd_train(args) -> int:
    from clcplus_ops.model import stages
    from clcplus_ops.model.sample_db import SampleDBError

    config = _config(args).for_layout(args.layout)
    try:
        if args.stage == "extract":
            result = stages.extract_pu_samples(config, args.layout, args.pu_id, args.year, force=args.force)
        elif args.stage == "audit":
            result = stages.audit_pu_labels(config, args.pu_id, args.year, force=args.force)
        elif args.stage == "review":
            result = stages.apply_review(config, args.pu_id, args.year, args.choice, decisions_url=args.decisions,
                                         reviewer=args.reviewer)
        elif args.stage == "evaluate":
            result = stages.evaluate_pu(config, args.pu_id, args.year, force=args.force)
        elif args.stage == "fit":
            result = stages.final_fit_pu(config, args.pu_id, args.year, force=args.force)
        else:
            result = stages.register_pu_model(config, args.pu_id, args.year)
    except (stages.TrainingError, SampleDBError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_models(args) -> int:
    from clcplus_ops.model import registry
    from clcplus_ops.plan import store_for

    config = _config(args)
    store = store_for(config)
    if args.action == "list":
        for version in registry.list_versions(store, config.store.models, args.pu_id):
            card = registry.resolve_model(store, config.store.models, args.pu_id, version).card
            oa = card.get("metrics", {}).get("overall_accuracy")
            print(f"{version}  {card['created']}  reference year {card.get('reference_year')}  "
                  f"hold-out OA {oa:.1%}" if oa is not None else f"{version}  {card['created']}")
        return 0
    try:
        model = registry.resolve_model(store, config.store.models, args.pu_id, args.version)
    except registry.ModelNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(store.read_text(f"{model.url}/{registry.CARD_MARKDOWN}"))
    return 0


def cmd_demo(args) -> int:
    from clcplus_ops.embedded import airflow_env, write_embedded_config
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
    config_path = write_embedded_config(home, home / "config.yaml")
    env = airflow_env(home, repo, config_path)
    env.setdefault("PYTHONWARNINGS", "ignore")  # library deprecation chatter hides the demo's output
    airflow = str(Path(sys.executable).with_name("airflow"))
    started = time.perf_counter()
    print(f"demo: Airflow home {env['AIRFLOW_HOME']} (SQLite, LocalExecutor), store {home / 'store'}")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    config = load_config(config_path)
    from clcplus_ops.synthetic import build_world

    world = build_world(config, args.year)
    print(f"demo: synthetic Sentinel-2 world {args.year} {'reused' if world['skipped'] else 'generated'}: "
          f"{world['items']} scenes in {world['catalog_url']}")
    units = [u["pu_id"] for u in layout_index(config.layout_path("demo"))]
    from clcplus_ops import demo

    for model in demo.ensure_models(config, args.year, units, world["samples_csv_url"]):
        how = "trained on the synthetic samples" if model["trained"] else "registered earlier, reused"
        print(f"demo: {model['pu_id']} model {model['version']} ({how}; hold-out overall accuracy "
              f"{100 * model['overall_accuracy']:.1f} %)")
    for pu_id in units:
        dag_id = f"clcplus_pu_{pu_id}"
        print(f"demo: running {dag_id} for reference year {args.year}: ingest, classify, filter every tile")
        # The logical date is the day the acquisition window closed.
        result = subprocess.run([airflow, "dags", "test", dag_id, f"{args.year + 1}-04-01"], env=env)
        if result.returncode:
            print(f"demo: {dag_id} failed (exit {result.returncode})", file=sys.stderr)
            return result.returncode
    from clcplus_ops.plan import pu_url, stage_record_url, store_for, tile_url
    from clcplus_ops.store import join

    store = store_for(config)
    demo_config = config.for_layout("demo")
    for pu_id in units:
        done = store.read_json(join(pu_url(demo_config, args.year, pu_id), "tiles_done.json"))
        records = [store.read_record(stage_record_url(tile_url(demo_config, args.year, pu_id, t), "ingest"))
                   for t in done["tiles"]]
        dates = [r.details["dates"] for r in records]
        skipped = sum(r.details["scenes_skipped"] for r in records)
        engines = {store.read_record(stage_record_url(tile_url(demo_config, args.year, pu_id, t), "classify"))
                   .details["engine"]["precision"] for t in done["tiles"]}
        print(f"demo: {pu_id} {args.year}: {len(done['tiles'])} tiles ingested ({min(dates)}-{max(dates)} acquisition "
              f"dates per tile, {skipped} scenes skipped), classified ({'/'.join(sorted(engines))}) and filtered "
              f"under {pu_url(demo_config, args.year, pu_id)}")
    pixels = correct = correct_raw = 0
    for pu_id in units:
        acc = demo.map_accuracy(config, args.year, pu_id, world["truth_url"], store)
        print(f"demo: {pu_id} map against the synthetic ground truth ({acc['pixels']:,} px): overall accuracy "
              f"{100 * acc['overall_accuracy_classified']:.2f} % classified, "
              f"{100 * acc['overall_accuracy_filtered']:.2f} % after the bilateral filter "
              f"({100 * acc['changed_by_filter']:.2f} % of pixels changed class)")
        pixels += acc["pixels"]
        correct += acc["overall_accuracy_filtered"] * acc["pixels"]
        correct_raw += acc["overall_accuracy_classified"] * acc["pixels"]
    print(f"demo: overall accuracy of the filtered maps {100 * correct / pixels:.2f} % "
          f"(unfiltered {100 * correct_raw / pixels:.2f} %) over {pixels:,} px")
    print(f"demo: finished in {time.perf_counter() - started:.0f} s")
    return 0


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
    plan.add_argument("year", type=int)
    plan.add_argument("--layout", default="production", choices=("production", "demo"))
    plan.add_argument("--only-tiles", nargs="*")
    plan.set_defaults(func=cmd_plan)

    synthetic = sub.add_parser("synthetic", help="the synthetic Sentinel-2 world").add_subparsers(dest="action", required=True)
    build = synthetic.add_parser("build", help="generate the world of a reference year (scenes, truth, samples)")
    build.add_argument("year", type=int)
    build.add_argument("--force", action="store_true", help="rebuild even if it is current")
    build.set_defaults(func=cmd_synthetic_build)

    ingest = sub.add_parser("ingest", help="build one tile's Sentinel-2 time series (the ingest stage)")
    ingest.add_argument("pu_id")
    ingest.add_argument("year", type=int)
    ingest.add_argument("tile_id")
    ingest.add_argument("--layout", default="production", choices=("production", "demo"))
    ingest.add_argument("--force", action="store_true")
    ingest.set_defaults(func=cmd_ingest)

    for name, func, text in (("classify", cmd_classify, "classify one tile with its PU's registered model"),
                             ("filter", cmd_filter, "bilateral filter of one tile's class probabilities")):
        stage = sub.add_parser(name, help=f"{text} (the {name} stage)")
        stage.add_argument("pu_id")
        stage.add_argument("year", type=int)
        stage.add_argument("tile_id")
        stage.add_argument("--layout", default="production", choices=("production", "demo"))
        stage.add_argument("--force", action="store_true")
        if name == "classify":
            stage.add_argument("--model-version", help="registered version, e.g. v0002 (default: the latest)")
        stage.set_defaults(func=func)

    samples = sub.add_parser("samples", help="the sample DB (points, labels, revisions)").add_subparsers(dest="action", required=True)
    simport = samples.add_parser("import", help="import sample points from CSV or GeoPackage")
    simport.add_argument("file", help="path or store URL of a .csv (sample_id,label,lon,lat | x,y,epsg) or .gpkg")
    simport.add_argument("--author", default="import")
    simport.add_argument("--layer", help="GeoPackage layer (default: the first)")
    simport.set_defaults(func=cmd_samples_import)
    shistory = samples.add_parser("history", help="the revisions of one sample")
    shistory.add_argument("sample_id")
    shistory.set_defaults(func=cmd_samples_history)

    train = sub.add_parser("train", help="one training stage of a PU (as the training DAG runs them)")
    train.add_argument("stage", choices=TRAINING_STAGES)
    train.add_argument("pu_id")
    train.add_argument("year", type=int, help="reference year of the sample time series")
    train.add_argument("--layout", default="production", choices=("production", "demo"))
    train.add_argument("--force", action="store_true")
    train.add_argument("--choice", default="keep", choices=("accept", "keep", "decisions"), help="review: the expert's choice")
    train.add_argument("--decisions", help="review: URL or path of the decisions CSV (with --choice decisions)")
    train.add_argument("--reviewer", default="expert", help="review: who decided")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="action", required=True)
    mlist = models.add_parser("list", help="registered versions of a PU's model")
    mlist.add_argument("pu_id")
    mlist.set_defaults(func=cmd_models)
    mshow = models.add_parser("show", help="the model card of a version (latest by default)")
    mshow.add_argument("pu_id")
    mshow.add_argument("--version")
    mshow.set_defaults(func=cmd_models)

    demo = sub.add_parser("demo", help="run the demo production on the embedded default")
    demo.add_argument("--home", default=".demo", help="folder for Airflow home, config and store")
    demo.add_argument("--repo", default=".", help="repository root holding dags/ and plugins/")
    demo.add_argument("--year", type=int, default=2025)
    demo.add_argument("--fresh", action="store_true", help="start over (the synthetic world and the registered models are kept and reused)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
