"""Airflow plugin: the CLCplus reference-year timetable.

One run per reference year; its data interval is the acquisition window [1 Oct Y-1, 1 Apr Y+1)
and it runs once the window has closed. Runs are scheduled for the product's reference years
(2018, 2021, then biennially from 2023), so a backfill over 2017-2022 makes the 2018 and 2021
runs. A manual run gets the latest window that has closed by its logical date: any year, so an
operator can re-make any reference year.
"""

from __future__ import annotations

import itertools

import pendulum
from pendulum import UTC, DateTime

from airflow.plugins_manager import AirflowPlugin
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable
from clcplus_ops import calendar


class ReferenceYearTimetable(Timetable):
    def __init__(
        self,
        first_year: int = calendar.FIRST_BIENNIAL_YEAR,
        every: int = calendar.EVERY_YEARS,
        historical_years: tuple[int, ...] = calendar.HISTORICAL_YEARS,
    ) -> None:
        self.first_year = first_year
        self.every = every
        self.historical_years = tuple(historical_years)
        years = ", ".join(str(y) for y in self.historical_years)
        self.description = (
            f"CLCplus reference years {years}, then every {every} years from {first_year}; "
            "data interval 1 Oct Y-1 to 1 Apr Y+1"
        )

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def interval(year: int) -> DataInterval:
        start, end = calendar.window(year)
        return DataInterval(
            start=DateTime(start.year, start.month, start.day, tzinfo=UTC),
            end=DateTime(end.year, end.month, end.day, tzinfo=UTC),
        )

    @staticmethod
    def reference_year(data_interval: DataInterval) -> int:
        return calendar.reference_year(data_interval.start, data_interval.end)

    def _years(self):
        return calendar.scheduled_years(self.first_year, self.every, self.historical_years)

    # -- Timetable protocol -------------------------------------------------------------
    @property
    def summary(self) -> str:
        return f"reference years every {self.every}y from {self.first_year}"

    def serialize(self) -> dict:
        return {"first_year": self.first_year, "every": self.every, "historical_years": list(self.historical_years)}

    @classmethod
    def deserialize(cls, data: dict) -> ReferenceYearTimetable:
        return cls(data["first_year"], data["every"], tuple(data["historical_years"]))

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
