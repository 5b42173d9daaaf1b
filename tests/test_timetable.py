import pendulum
import pytest
from airflow.timetables.base import DataInterval, TimeRestriction

from clcplus_ops import calendar
from clcplus_timetable import ReferenceYearTimetable

UTC = pendulum.UTC


def _years(timetable, earliest, latest=None, catchup=True, limit=6):
    restriction = TimeRestriction(earliest=earliest, latest=latest, catchup=catchup)
    last, years = None, []
    for _ in range(limit):
        info = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        if info is None:
            break
        years.append(ReferenceYearTimetable.reference_year(info.data_interval))
        assert info.run_after == info.data_interval.end  # runs once the window has closed
        last = info.data_interval
    return years


def test_interval_is_the_acquisition_window():
    interval = ReferenceYearTimetable.interval(2023)
    assert interval.start == pendulum.datetime(2022, 10, 1, tz=UTC)
    assert interval.end == pendulum.datetime(2024, 4, 1, tz=UTC)
    assert ReferenceYearTimetable.reference_year(interval) == 2023


def test_schedule_is_biennial_from_2023():
    years = _years(ReferenceYearTimetable(), pendulum.datetime(2022, 1, 1, tz=UTC))
    assert years == [2023, 2025, 2027, 2029, 2031, 2033]


def test_backfill_over_the_history_makes_2018_and_2021():
    years = _years(ReferenceYearTimetable(), pendulum.datetime(2017, 9, 1, tz=UTC),
                   latest=pendulum.datetime(2022, 9, 30, tz=UTC))
    assert years == [2018, 2021]


def test_without_catchup_the_latest_closed_window_runs_first():
    years = _years(ReferenceYearTimetable(), pendulum.datetime(2017, 9, 1, tz=UTC), catchup=False, limit=1)
    now = pendulum.now(UTC)
    closed = [y for y in (2023, 2025, 2027, 2029) if ReferenceYearTimetable.interval(y).end <= now]
    assert years == [closed[-1]]


@pytest.mark.parametrize(
    "run_after, year",
    [("2019-04-01", 2018), ("2019-03-31", 2017), ("2022-06-15", 2021), ("2024-04-01", 2023), ("2026-11-25", 2025)],
)
def test_manual_runs_take_the_latest_closed_window(run_after, year):
    interval = ReferenceYearTimetable().infer_manual_data_interval(run_after=pendulum.parse(run_after))
    assert ReferenceYearTimetable.reference_year(interval) == year


def test_a_foreign_interval_is_not_a_reference_year():
    odd = DataInterval(pendulum.datetime(2023, 1, 1, tz=UTC), pendulum.datetime(2024, 1, 1, tz=UTC))
    with pytest.raises(ValueError, match="not a CLCplus acquisition window"):
        ReferenceYearTimetable.reference_year(odd)


def test_serialisation_round_trip():
    timetable = ReferenceYearTimetable(first_year=2025, every=3, historical_years=(2018,))
    again = ReferenceYearTimetable.deserialize(timetable.serialize())
    assert again.serialize() == timetable.serialize()
    assert _years(again, pendulum.datetime(2017, 1, 1, tz=UTC), limit=3) == [2018, 2025, 2028]


def test_scheduled_years_helper():
    years = calendar.scheduled_years()
    assert [next(years) for _ in range(5)] == [2018, 2021, 2023, 2025, 2027]
