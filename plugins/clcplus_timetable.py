"""Airflow plugin: the CLCplus reference-year timetable.

One run per reference year; its data interval is that year's acquisition window
(``time_series.window``: [1 Oct Y-1, 1 Apr Y+1) by default, each year of
``time_series.year_windows`` its own: [1 Jul 2017, 1 Jul 2019) for 2018) and it runs once the
window has closed. Runs are scheduled for the product's reference years
(``time_series.historical_years``, then every ``every_years`` from ``first_biennial_year``: 2018,
2021, then biennially from 2023 by default). A manual run gets the latest window that has closed
by its logical date: any year, so an operator can re-make any reference year.

Date ranges (a DAG's start date, ``airflow backfill create --from-date/--to-date``) select
reference years, not windows: year Y is in [earliest, latest] when its 1 January is. Windows
overlap the years around them (2023's opens on 1 Oct 2022), so "a backfill over 2017-2022"
(--from-date 2017-01-01 --to-date 2022-12-31) makes exactly the 2018 and 2021 runs, and a start
date of 1 Sep 2017 still schedules 2018, whose window opened on 1 Jul 2017. A run's logical
date stays the start of its window (Airflow's convention for a data interval).

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
from clcplus_ops.config import TimeSeriesConfig, YearWindow, load_config


class ReferenceYearTimetable(Timetable):
    """Arguments left out are taken from the configuration's ``time_series``."""

    def __init__(
        self,
        first_year: int | None = None,
        every: int | None = None,
        historical_years: tuple[int, ...] | None = None,
        window_start_month: int | None = None,
        window_end_month: int | None = None,
        year_windows: dict[int, tuple[int, int]] | None = None,
        automatic: bool | None = None,
    ) -> None:
        given = (first_year, every, historical_years, window_start_month, window_end_month, year_windows)
        configured = load_config().time_series if None in given else None
        # False: the scheduler makes no run of its own; runs are triggered (the embedded demo
        # triggers its reference years in order) or backfilled (``airflow.scheduled_runs``).
        self.automatic = load_config().airflow.scheduled_runs if automatic is None else bool(automatic)

        def pick(value, name):
            return getattr(configured, name) if value is None else value

        self.first_year = pick(first_year, "first_biennial_year")
        self.every = pick(every, "every_years")
        self.historical_years = tuple(pick(historical_years, "historical_years"))
        if year_windows is None:
            year_windows = {year: (w.window_start_month, w.window_end_month)
                            for year, w in configured.year_windows.items()}
        # Only the windows' months matter here (no validation of the time steps against them).
        self.series = TimeSeriesConfig.model_construct(
            window_start_month=pick(window_start_month, "window_start_month"),
            window_end_month=pick(window_end_month, "window_end_month"),
            year_windows={int(year): YearWindow.model_construct(window_start_month=opens, window_end_month=closes,
                                                                n_steps=None)
                          for year, (opens, closes) in sorted(year_windows.items(), key=lambda kv: int(kv[0]))},
        )
        years = ", ".join(str(y) for y in self.historical_years)
        opens, closes = (month_names.month_abbr[m]
                         for m in (self.series.window_start_month, self.series.window_end_month))
        own = "".join(
            f"; {year}: 1 {month_names.month_abbr[w.window_start_month]} {year - 1} to "
            f"1 {month_names.month_abbr[w.window_end_month]} {year + 1}"
            for year, w in self.series.year_windows.items())
        self.description = (
            f"CLCplus reference years {years}, then every {self.every} years from {self.first_year}; "
            f"data interval 1 {opens} Y-1 to 1 {closes} Y+1{own}"
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

    @staticmethod
    def _new_year(year: int) -> DateTime:
        """The date that places reference year ``year`` in a date range (its 1 January)."""
        return DateTime(year, 1, 1, tzinfo=UTC)

    # -- Timetable protocol -------------------------------------------------------------
    @property
    def summary(self) -> str:
        return f"reference years every {self.every}y from {self.first_year}"

    def serialize(self) -> dict:
        # JSON object keys are strings: the years of the own windows travel as "2018".
        return {"first_year": self.first_year, "every": self.every, "historical_years": list(self.historical_years),
                "window_start_month": self.series.window_start_month, "window_end_month": self.series.window_end_month,
                "year_windows": {str(year): [w.window_start_month, w.window_end_month]
                                 for year, w in self.series.year_windows.items()},
                "automatic": self.automatic}

    @classmethod
    def deserialize(cls, data: dict) -> ReferenceYearTimetable:
        # A DAG serialised before year_windows existed had one window for every year.
        year_windows = {int(year): tuple(months) for year, months in data.get("year_windows", {}).items()}
        return cls(data["first_year"], data["every"], tuple(data["historical_years"]),
                   data["window_start_month"], data["window_end_month"], year_windows, data.get("automatic", True))

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
        if not self.automatic and not restriction.catchup:
            return None  # the scheduler's own runs are off; a backfill (catch-up) still works
        if last_automated_data_interval is not None:
            last = self.reference_year(last_automated_data_interval)
            year = next(y for y in self._years() if y > last)
        else:
            if restriction.earliest is None:
                return None
            candidates = (y for y in self._years() if self._new_year(y) >= restriction.earliest)
            year = next(candidates)
            if not restriction.catchup:
                # Without catch-up, start from the latest window that has closed (or the next).
                now = pendulum.now(UTC)
                for y in itertools.takewhile(lambda y: self.interval(y).end <= now, self._years()):
                    if self._new_year(y) >= restriction.earliest:
                        year = y
        if restriction.latest is not None and self._new_year(year) > restriction.latest:
            return None
        interval = self.interval(year)
        return DagRunInfo.interval(start=interval.start, end=interval.end)


class ClcplusPlugin(AirflowPlugin):
    name = "clcplus"
    timetables = [ReferenceYearTimetable]
