"""Waiting for the neighbouring PUs' mosaics without holding a worker slot.

Blending needs the neighbours' probabilities in the overlap. The wait is a deferrable task:
``wait_for_neighbours`` checks the store once on a worker; if a neighbour's mosaic is missing
it defers to :class:`NeighbourMosaicsTrigger`, which polls the store from Airflow's triggerer
(``blending.neighbour_poll_seconds``) and frees the worker slot meanwhile. At the deadline
(``blending.neighbour_timeout_minutes`` after the wait began) the task succeeds anyway with the
neighbours still missing named: the PU blends with what exists, and a later re-run of its
``blend`` task (or of the run) picks the late neighbour up, because the neighbour's mosaic
record enters the blend's fingerprint.

Why a deferrable sensor and not data-aware scheduling with Assets: the wait has a deadline
after which the PU goes on with what exists, which an Asset condition cannot express; the PU's
run stays one DAG run that operators follow and clear as one; and the store (the records) is the
truth of what is ready, also for work done outside Airflow (the command line, a re-run), which
Asset events would not see.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

log = logging.getLogger(__name__)


def _status(layout: str, pu_id: str, reference_year: int) -> dict[str, list[str]]:
    from clcplus_airflow.tasks import task_store
    from clcplus_ops.config import load_config
    from clcplus_ops.postprocessing.blending import neighbour_status
    from clcplus_ops.stage import Target

    config = load_config().for_layout(layout)
    return neighbour_status(config, Target(layout, reference_year, pu_id), task_store(config))


class NeighbourMosaicsTrigger(BaseTrigger):
    """Fires when every neighbour of the PU has a committed mosaic, or at ``deadline``."""

    def __init__(self, layout: str, pu_id: str, reference_year: int, deadline: str, poll_seconds: float):
        super().__init__()
        self.layout, self.pu_id, self.reference_year = layout, pu_id, int(reference_year)
        self.deadline, self.poll_seconds = deadline, float(poll_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"layout": self.layout, "pu_id": self.pu_id, "reference_year": self.reference_year,
                 "deadline": self.deadline, "poll_seconds": self.poll_seconds})

    async def run(self):
        from asgiref.sync import sync_to_async

        deadline = datetime.fromisoformat(self.deadline)
        while True:
            status = await sync_to_async(_status)(self.layout, self.pu_id, self.reference_year)
            left = (deadline - datetime.now(timezone.utc)).total_seconds()
            if not status["missing"] or left <= 0:
                yield TriggerEvent({**status, "timed_out": bool(status["missing"])})
                return
            self.log.info("%s: waiting for the mosaics of %s (%.0f s left)", self.pu_id, ", ".join(status["missing"]),
                          left)
            await asyncio.sleep(min(self.poll_seconds, left))


class WaitForNeighboursOperator(BaseOperator):
    """The PU's wait for its neighbours' mosaics (see the module documentation). Returns the
    neighbours ready and missing; never fails for a missing neighbour."""

    ui_color = "#e8f0fe"

    def __init__(self, *, layout: str, pu_id: str, **kwargs):
        super().__init__(**kwargs)
        self.layout, self.pu_id = layout, pu_id

    def execute(self, context) -> dict:
        from clcplus_airflow.tasks import interval_year
        from clcplus_ops.config import load_config

        year = interval_year(context)
        status = _status(self.layout, self.pu_id, year)
        if not status["missing"]:
            log.info("%s %d: neighbours ready: %s", self.pu_id, year, ", ".join(status["ready"]) or "none (no neighbour)")
            return {**status, "timed_out": False}
        settings = load_config().blending
        deadline = datetime.now(timezone.utc) + timedelta(minutes=settings.neighbour_timeout_minutes)
        log.info("%s %d: waiting until %s for the mosaics of %s, without a worker slot", self.pu_id, year,
                 deadline.isoformat(timespec="seconds"), ", ".join(status["missing"]))
        self.defer(trigger=NeighbourMosaicsTrigger(self.layout, self.pu_id, year, deadline.isoformat(),
                                                   settings.neighbour_poll_seconds),
                   method_name="resume")

    def resume(self, context, event: dict | None = None) -> dict:
        event = event or {}
        if event.get("missing"):
            log.warning("%s: %s not ready by the deadline: blending without them; re-run this PU's blend task "
                        "once they have a mosaic", self.pu_id, ", ".join(event["missing"]))
        else:
            log.info("%s: neighbours ready: %s", self.pu_id, ", ".join(event.get("ready", [])))
        return event
