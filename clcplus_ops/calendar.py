"""Reference years and their acquisition windows, as configured in ``time_series`` (ATBD 3.1.3:
reference year +- 3 months, 1 October of Y-1 to 31 March of Y+1, i.e. the half-open window
[1 Oct Y-1, 1 Apr Y+1) by default; 2018 was produced with +- 6 months, [1 Jul 2017, 1 Jul 2019),
``time_series.year_windows``).

The product history (``time_series.historical_years``, then every ``every_years`` from
``first_biennial_year``: 2018, 2021, 2023, 2025, ... by default) comes from the configuration
too. Runs are keyed by their window, and the reference year is read back from it, so backfills
of the earlier years work unchanged.

Every function takes the ``time_series`` section to use; without one it loads the
configuration (:func:`clcplus_ops.config.load_config`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from clcplus_ops.config import TimeSeriesConfig, YearSeries, load_config


def _series(series: TimeSeriesConfig | None) -> TimeSeriesConfig:
    return series if series is not None else load_config().time_series


def window(year: int, series: TimeSeriesConfig | None = None) -> tuple[dt.date, dt.date]:
    """[start, end) of the acquisition window of reference year ``year``."""
    return _series(series).window(year)


def year_series(year: int, series: TimeSeriesConfig | None = None) -> YearSeries:
    """The window and time steps of reference year ``year`` (its own, or the default)."""
    return _series(series).for_year(year)


def reference_year(start: dt.date | dt.datetime, end: dt.date | dt.datetime,
                   series: TimeSeriesConfig | None = None) -> int:
    """The reference year whose acquisition window is exactly [start, end); ValueError if none."""
    series = _series(series)
    start_d = start.date() if isinstance(start, dt.datetime) else start
    end_d = end.date() if isinstance(end, dt.datetime) else end
    # Every window, the default and each year's own, opens in year Y-1 (its start month is in
    # the year before the reference year): one candidate, compared with that year's own window.
    year = start_d.year + 1
    expected = series.window(year)
    if (start_d, end_d) != expected:
        raise ValueError(
            f"data interval {start_d}..{end_d} is not a CLCplus acquisition window "
            f"(reference year {year} would be {expected[0]}..{expected[1]})"
        )
    return year


def scheduled_years(first: int | None = None, every: int | None = None, historical: Iterable[int] | None = None,
                    series: TimeSeriesConfig | None = None) -> Iterator[int]:
    """Reference years of the product in order: the historical ones before ``first``, then
    every ``every`` years from ``first`` (defaults: the configured history)."""
    if first is None or every is None or historical is None:
        series = _series(series)
        first = series.first_biennial_year if first is None else first
        every = series.every_years if every is None else every
        historical = series.historical_years if historical is None else historical
    yield from sorted(y for y in historical if y < first)
    year = first
    while True:
        yield year
        year += every
