import datetime as dt
import os

import pendulum
import pytest
import yaml
from airflow.timetables.base import DataInterval, TimeRestriction

from clcplus_ops import calendar
from clcplus_ops.config import CONFIG_ENV, load_config
from clcplus_timetable import ReferenceYearTimetable

UTC = pendulum.UTC


def _years(timetable, earliest, latest=None, catchup=True, limit=6):
    restriction = TimeRestriction(earliest=earliest, latest=latest, catchup=catchup)
    last, years = None, []
    for _ in range(limit):
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        if info is None:
            break
        years.append(timetable.reference_year(info.data_interval))
        assert info.run_after == info.data_interval.end  # runs once the window has closed
        last = info.data_interval
    return years


@pytest.fixture
def configured(tmp_path, monkeypatch):
    """Point $CLCPLUS_CONFIG at a configuration with the given ``time_series`` values."""

    def use(**time_series):
        path = tmp_path / "config.yaml"
        base = yaml.safe_load(open(os.environ[CONFIG_ENV])) or {}
        base["time_series"] = {**base.get("time_series", {}), **time_series}
        path.write_text(yaml.safe_dump(base))
        monkeypatch.setenv(CONFIG_ENV, str(path))
        return load_config()

    return use


def test_interval_is_the_acquisition_window():
    interval = ReferenceYearTimetable().interval(2023)
    assert interval.start == pendulum.datetime(2022, 10, 1, tz=UTC)
    assert interval.end == pendulum.datetime(2024, 4, 1, tz=UTC)
    assert ReferenceYearTimetable().reference_year(interval) == 2023


def test_schedule_is_biennial_from_2023():
    years = _years(ReferenceYearTimetable(), pendulum.datetime(2022, 1, 1, tz=UTC))
    assert years == [2023, 2025, 2027, 2029, 2031, 2033]


def test_backfill_over_the_history_makes_2018_and_2021():
    years = _years(ReferenceYearTimetable(), pendulum.datetime(2017, 9, 1, tz=UTC),
                   latest=pendulum.datetime(2022, 9, 30, tz=UTC))
    assert years == [2018, 2021]


def test_without_catchup_the_latest_closed_window_runs_first():
    timetable = ReferenceYearTimetable()
    years = _years(timetable, pendulum.datetime(2017, 9, 1, tz=UTC), catchup=False, limit=1)
    now = pendulum.now(UTC)
    closed = [y for y in (2023, 2025, 2027, 2029) if timetable.interval(y).end <= now]
    assert years == [closed[-1]]


@pytest.mark.parametrize(
    "run_after, year",
    [("2019-04-01", 2018), ("2019-03-31", 2017), ("2022-06-15", 2021), ("2024-04-01", 2023), ("2026-11-25", 2025)],
)
def test_manual_runs_take_the_latest_closed_window(run_after, year):
    timetable = ReferenceYearTimetable()
    interval = timetable.infer_manual_data_interval(run_after=pendulum.parse(run_after))
    assert timetable.reference_year(interval) == year


def test_a_foreign_interval_is_not_a_reference_year():
    odd = DataInterval(pendulum.datetime(2023, 1, 1, tz=UTC), pendulum.datetime(2024, 1, 1, tz=UTC))
    with pytest.raises(ValueError, match="not a CLCplus acquisition window"):
        ReferenceYearTimetable().reference_year(odd)


def test_serialisation_round_trip():
    timetable = ReferenceYearTimetable(first_year=2025, every=3, historical_years=(2018,))
    again = ReferenceYearTimetable.deserialize(timetable.serialize())
    assert again.serialize() == timetable.serialize()
    assert _years(again, pendulum.datetime(2017, 1, 1, tz=UTC), limit=3) == [2018, 2025, 2028]


def test_scheduled_years_helper():
    years = calendar.scheduled_years()
    assert [next(years) for _ in range(5)] == [2018, 2021, 2023, 2025, 2027]


def test_window_and_years_come_from_the_configuration(configured):
    config = configured(window_start_month=9, window_end_month=3, historical_years=[2019],
                        first_biennial_year=2024, every_years=3)
    assert calendar.window(2024) == config.time_series.window(2024) == (dt.date(2023, 9, 1), dt.date(2025, 3, 1))
    assert calendar.reference_year(dt.date(2023, 9, 1), dt.date(2025, 3, 1)) == 2024
    with pytest.raises(ValueError, match="not a CLCplus acquisition window"):
        calendar.reference_year(dt.date(2023, 10, 1), dt.date(2025, 4, 1))  # the default window is not this one
    years = calendar.scheduled_years()
    assert [next(years) for _ in range(4)] == [2019, 2024, 2027, 2030]

    timetable = ReferenceYearTimetable()
    assert "1 Sep Y-1 to 1 Mar Y+1" in timetable.description
    interval = timetable.interval(2024)
    assert (interval.start, interval.end) == (pendulum.datetime(2023, 9, 1, tz=UTC), pendulum.datetime(2025, 3, 1, tz=UTC))
    assert _years(timetable, pendulum.datetime(2017, 1, 1, tz=UTC), limit=3) == [2019, 2024, 2027]
    assert timetable.infer_manual_data_interval(run_after=pendulum.datetime(2025, 3, 1, tz=UTC)) == interval
    # The serialised timetable carries the window: the scheduler needs no configuration of its own.
    data = timetable.serialize()
    assert data["window_start_month"] == 9 and data["window_end_month"] == 3
