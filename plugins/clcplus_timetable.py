"""Airflow plugin: the CLCplus reference-year timetable.

One run per reference year; its data interval is the configured acquisition window
(``time_series.window``: [1 Oct Y-1, 1 Apr Y+1) by default) and it runs once the window has
closed. Runs are scheduled for the product's reference years (``time_series.historical_years``,
then every ``every_years`` from ``first_biennial_year``: 2018, 2021, then biennially from 2023 by
default), so a backfill over 2017-2022 makes the 2018 and 2021 runs. A manual run gets the
latest window that has closed by its logical date: any year, so an operator can re-make any
reference year.

The timetable takes its values from the configuration when it is built (DAG parse time) and
carries them in its serialised form, so the scheduler needs no configuration of its own.
"""

from __future__ import annotations

import calendar as month_names
import itertools

import pendulum
from pendulum import UTC, DateTime

from airflow.plugins_manager import AirflowPlugin
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable
from clcplus_ops import calendar
from clcplus_ops.config import TimeSeriesConfig, load_config


class ReferenceYearTimetable(Timetable):
    """Arguments left out are taken from the configuration's ``time_series``."""

    def __init__(
        self,
        first_year: int | None = None,
        every: int | None = None,
        historical_years: tuple[int, ...] | None = None,
        window_start_month: int | None = None,
        window_end_month: int | None = None,
    ) -> None:
        given = (first_year, every, historical_years, window_start_month, window_end_month)
        configured = load_config().time_series if None in given else None

        def pick(value, name):
            return getattr(configured, name) if value is None else value

        self.first_year = pick(first_year, "first_biennial_year")
        self.every = pick(every, "every_years")
        self.historical_years = tuple(pick(historical_years, "historical_years"))
        # Only the window's months matter here (no validation of the time steps against them).
        self.series = TimeSeriesConfig.model_construct(
            window_start_month=pick(window_start_month, "window_start_month"),
            window_end_month=pick(window_end_month, "window_end_month"),
        )
        years = ", ".join(str(y) for y in self.historical_years)
        opens, closes = (month_names.month_abbr[m]
                         for m in (self.series.window_start_month, self.series.window_end_month))
        self.description = (
            f"CLCplus reference years {years}, then every {self.every} years from {self.first_year}; "
            f"data interval 1 {opens} Y-1 to 1 {closes} Y+1"
        )

    # -- helpers ----------------------------------------------------------------------
    def interval(self, year: int) -> DataInterval:
        """The data interval (acquisition window) of reference year ``year``."""
        start, end = calendar.window(year, self.series)
        return DataInterval(
            start=DateTime(start.year, start.month, start.day, tzinfo=UTC),
            end=DateTime(end.year, end.month, end.day, tzinfo=UTC),
        )

    def reference_year(self, data_interval: DataInterval) -> int:
        return calendar.reference_year(data_interval.start, data_interval.end, self.series)

    def _years(self):
        return calendar.scheduled_years(self.first_year, self.every, self.historical_years)

    # -- Timetable protocol -------------------------------------------------------------
    @property
    def summary(self) -> str:
        return f"reference years every {self.every}y from {self.first_year}"

    def serialize(self) -> dict:
        return {"first_year": self.first_year, "every": self.every, "historical_years": list(self.historical_years),
                "window_start_month": self.series.window_start_month, "window_end_month": self.series.window_end_month}

    @classmethod
    def deserialize(cls, data: dict) -> ReferenceYearTimetable:
        return cls(data["first_year"], data["every"], tuple(data["historical_years"]),
                   data["window_start_month"], data["window_end_month"])

    def validate(self) -> None:
        from airflow.exceptions import AirflowTimetableInvalid

        if self.every < 1:
            raise AirflowTimetableInvalid(f"every must be >= 1 year, got {self.every}")

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        # The latest window closed by run_after, whatever the year.
        year = run_after.year - 1
        while self.interval(year).end > run_after:
            year -= 1
        return self.interval(year)

    def next_dagrun_info(
        self, *, last_automated_data_interval: DataInterval | None, restriction: TimeRestriction
    ) -> DagRunInfo | None:
        if last_automated_data_interval is not None:
            last = self.reference_year(last_automated_data_interval)
            year = next(y for y in self._years() if y > last)
        else:
            if restriction.earliest is None:
                return None
            candidates = (y for y in self._years() if self.interval(y).start >= restriction.earliest)
            year = next(candidates)
            if not restriction.catchup:
                # Without catch-up, start from the latest window that has closed (or the next).
                now = pendulum.now(UTC)
                for y in itertools.takewhile(lambda y: self.interval(y).end <= now, self._years()):
                    if self.interval(y).start >= restriction.earliest:
                        year = y
        interval = self.interval(year)
        if restriction.latest is not None and interval.start > restriction.latest:
            return None
        return DagRunInfo.interval(start=interval.start, end=interval.end)


class ClcplusPlugin(AirflowPlugin):
    name = "clcplus"
    timetables = [ReferenceYearTimetable]
