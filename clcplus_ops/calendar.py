"""Reference years and their acquisition windows (ATBD 3.1.3: reference year +- 3 months,
1 October of Y-1 to 31 March of Y+1, i.e. the half-open window [1 Oct Y-1, 1 Apr Y+1)).

The product history: 2018, 2021, then biennially from 2023. Runs are keyed by their window, and
the reference year is read back from it, so backfills of the earlier years work unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from clcplus_ops.config import TimeSeriesConfig

HISTORICAL_YEARS = (2018, 2021)
FIRST_BIENNIAL_YEAR = 2023
EVERY_YEARS = 2


def window(year: int, series: TimeSeriesConfig | None = None) -> tuple[dt.date, dt.date]:
    return (series or TimeSeriesConfig()).window(year)


def reference_year(start: dt.date | dt.datetime, end: dt.date | dt.datetime, series: TimeSeriesConfig | None = None) -> int:
    """The reference year whose acquisition window is exactly [start, end); ValueError if none."""
    start_d = start.date() if isinstance(start, dt.datetime) else start
    end_d = end.date() if isinstance(end, dt.datetime) else end
    year = start_d.year + 1
    expected = window(year, series)
    if (start_d, end_d) != expected:
        raise ValueError(
            f"data interval {start_d}..{end_d} is not a CLCplus acquisition window "
            f"(reference year {year} would be {expected[0]}..{expected[1]})"
        )
    return year


def scheduled_years(first: int = FIRST_BIENNIAL_YEAR, every: int = EVERY_YEARS,
                    historical: Iterable[int] = HISTORICAL_YEARS) -> Iterator[int]:
    """Reference years of the product in order: the historical ones, then every ``every``."""
    yield from sorted(y for y in historical if y < first)
    year = first
    while True:
        yield year
        year += every
