"""kill -9 drill on a real Airflow (the embedded deployment, LocalExecutor): the task processes
of a PU run are killed while they read their inputs and while they write their outputs
(``clcplus_ops.kill_drill``, the code of ``scripts/drill_kill_worker.py`` with 3 moments instead
of 20); after each kill no partial artefact is visible, Airflow retries the task and the run ends
with the bytes of the same production made without Airflow. Afterwards no secret of the
deployment is in any of its logs. (A module of its own: the suite's two workers run it beside
the repair drill.)"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from clcplus_ops.kill_drill import KillDrill, Moment, clean_run
from clcplus_ops.locations import Locations
from clcplus_ops.runner import store_for
from clcplus_ops.store_audit import differences, problems, snapshot
from test_drills import DAG, _config, _demo_tiles, _deployment, _in_store, _store_config

# The lean kill drill: one tile and three moments (scripts/drill_kill_worker.py fires 20 at both
# demo PUs' runs, through publishing): ingest while it reads scenes, classify while it writes its
# probabilities, the PU's layers while it writes them.
MOMENTS = (Moment("tile.ingest", "read", 0.5), Moment("tile.classify", "write", 0.2), Moment("layers", "write", 0.1))


def test_task_processes_killed_mid_read_and_mid_write_leave_nothing_partial_and_are_retried(
        tmp_path, demo_world, demo_random_model, figure):
    home = tmp_path / "home"
    tile, version = _demo_tiles()[0], demo_random_model["version"]
    config_path = _config(tmp_path / "config.yaml", home / "store", [], retries=2, retry_delay_minutes=0.02)
    config = _store_config(config_path)
    started = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        # The clean run (the same stages in another store) goes on alongside.
        clean = _in_store(config, tmp_path / "clean")
        clean_done = pool.submit(clean_run, clean, "demo", 2025, ["DEMO1"], {"DEMO1": [tile]}, {"DEMO1": version})
        with _deployment(home, config_path) as (services, api, _):
            run = api.trigger(DAG, "2026-04-01T00:00:00Z", {"only_tiles": [tile], "model_version": version})
            drill = KillDrill(api, services.pids()["scheduler"], {DAG: run}, MOMENTS, config, "demo", 2025)
            result = drill.run(timeout_s=420)
            tis = {(ti["task_id"], ti["map_index"]): ti for ti in api.task_instances(DAG, run)}
        clean_done.result()
    reference = snapshot(Locations(clean), store_for(clean))
    assert result.states == {DAG: "success"} and not result.missed
    assert [(k.task, k.moment.aim) for k in result.kills] == [(m.task, m.aim) for m in MOMENTS]
    for kill in result.kills:
        # Killed in its first try before its commit: no record; nothing partial anywhere.
        assert kill.try_number == 1 and kill.state == "no record", kill.describe()
        assert problems(kill.found, reference) == [], kill.describe()
        assert kill.found.temporaries[0] >= 1  # what the killed write left, under a hidden name
        assert tis[(kill.task, 0 if kill.task.startswith("tile.") else -1)]["try_number"] == 2
    final = drill.audit()
    assert differences(final, reference) == [] and final.temporaries == (0, 0)  # the retries removed them
    assert len(final.records) == len(reference.records) >= 10
    figure(f"kill -9 drill on the embedded Airflow (lean): {', '.join(f'{k.task} {k.moment.aim} at {k.at_s:.0f} s' for k in result.kills)}; "
           f"each retried, nothing partial after any kill, the run's {len(final.records)} records = the clean run's; "
           f"{time.perf_counter() - started:.0f} s")
