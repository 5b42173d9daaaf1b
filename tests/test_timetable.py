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


def test_without_scheduled_runs_only_triggers_and_backfills_make_runs():
    timetable = ReferenceYearTimetable(automatic=False)
    assert _years(timetable, pendulum.datetime(2017, 9, 1, tz=UTC), catchup=False, limit=1) == []
    assert _years(timetable, pendulum.datetime(2017, 9, 1, tz=UTC), latest=pendulum.datetime(2022, 9, 30, tz=UTC)) \
        == [2018, 2021]
    again = ReferenceYearTimetable.deserialize(timetable.serialize())
    assert again.automatic is False and ReferenceYearTimetable(automatic=True).automatic is True


@pytest.mark.parametrize(
    "run_after, year",
    # 2018's window (+- 6 months) closes on 1 July 2019: before that, 2017's is the latest closed.
    [("2019-07-01", 2018), ("2019-06-30", 2017), ("2019-04-01", 2017), ("2022-06-15", 2021), ("2024-04-01", 2023),
     ("2026-11-25", 2025)],
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


def test_each_year_has_its_own_window_and_steps():
    """ATBD 3.1.3: 2018 was produced with the reference year +- 6 months, 2021 on with +- 3."""
    series = load_config().time_series
    y2018, y2021, y2023 = (series.for_year(y) for y in (2018, 2021, 2023))
    assert y2018.window == (dt.date(2017, 7, 1), dt.date(2019, 7, 1)) and y2018.n_steps == 73
    assert y2021.window == (dt.date(2020, 10, 1), dt.date(2022, 4, 1)) and y2021.n_steps == 54
    assert y2023.window == (dt.date(2022, 10, 1), dt.date(2024, 4, 1)) and y2023.n_steps == 54
    steps = series.steps(2018)
    assert steps[0] == dt.date(2017, 7, 1) and steps[-1] == dt.date(2019, 6, 21) < y2018.end
    assert {(b - a).days for a, b in zip(steps, steps[1:])} == {10}
    assert calendar.window(2018) == y2018.window and calendar.year_series(2018) == y2018
    assert calendar.reference_year(dt.date(2017, 7, 1), dt.date(2019, 7, 1)) == 2018
    # 2018 with the default window is not a window of this configuration.
    with pytest.raises(ValueError, match=r"reference year 2018 would be 2017-07-01\.\.2019-07-01"):
        calendar.reference_year(dt.date(2017, 10, 1), dt.date(2019, 4, 1))
    # A window without a step count gets as many whole steps as it holds.
    derived = series.model_copy(update={"year_windows": {2019: series.year_windows[2018].model_copy(
        update={"n_steps": None})}})
    assert derived.for_year(2019).n_steps == 73 and derived.for_year(2020).n_steps == 54


def test_the_timetable_gives_each_year_its_window():
    timetable = ReferenceYearTimetable()
    assert "2018: 1 Jul 2017 to 1 Jul 2019" in timetable.description
    for year, start, end in ((2018, (2017, 7, 1), (2019, 7, 1)), (2021, (2020, 10, 1), (2022, 4, 1))):
        interval = timetable.interval(year)
        assert (interval.start, interval.end) == (pendulum.datetime(*start, tz=UTC), pendulum.datetime(*end, tz=UTC))
        assert timetable.reference_year(interval) == year
    # The scheduler's copy (serialised, then rebuilt without a configuration) has the same windows.
    data = timetable.serialize()
    assert data["year_windows"] == {"2018": [7, 7]}
    again = ReferenceYearTimetable.deserialize(data)
    assert again.interval(2018) == timetable.interval(2018) and again.interval(2021) == timetable.interval(2021)
    # Date ranges select reference years by their 1 January: 2018 is in a range starting on
    # 1 Sep 2017 (the default DAG start) though its window opened on 1 Jul 2017, and 2023 is
    # not in a range ending 31 Dec 2022 though its window opened on 1 Oct 2022.
    assert _years(again, pendulum.datetime(2017, 1, 1, tz=UTC), latest=pendulum.datetime(2022, 12, 31, tz=UTC)) \
        == [2018, 2021]
    assert _years(again, pendulum.datetime(2017, 9, 1, tz=UTC), limit=3) == [2018, 2021, 2023]
    assert _years(again, pendulum.datetime(2018, 1, 2, tz=UTC), limit=1) == [2021]
    assert _years(again, pendulum.datetime(2018, 1, 1, tz=UTC), latest=pendulum.datetime(2018, 1, 1, tz=UTC)) \
        == [2018]


def test_year_windows_come_from_the_configuration(configured):
    configured(year_windows={2021: {"window_start_month": 7, "window_end_month": 7}})
    timetable = ReferenceYearTimetable()
    # Given whole: 2018 has the default window now, 2021 its own with its derived step count.
    assert timetable.interval(2018).start == pendulum.datetime(2017, 10, 1, tz=UTC)
    assert timetable.interval(2021).end == pendulum.datetime(2022, 7, 1, tz=UTC)
    assert load_config().time_series.for_year(2021).n_steps == 73
    assert ReferenceYearTimetable.deserialize(timetable.serialize()).interval(2021) == timetable.interval(2021)


def test_a_serialisation_without_year_windows_still_loads():
    data = ReferenceYearTimetable().serialize()
    del data["year_windows"]
    old = ReferenceYearTimetable.deserialize(data)
    assert old.interval(2018).start == pendulum.datetime(2017, 10, 1, tz=UTC)  # one window then, for every year


@pytest.mark.parametrize("year_windows, words", [
    ({2018: {"window_start_month": 7, "window_end_month": 7, "n_steps": 74}},
     "year_windows.2018: n_steps=74 x step_days=10 overruns the 730-day window"),
    ({2018: {"window_start_month": 13, "window_end_month": 7}}, "less than or equal to 12"),
    ({2018: {"window_start_month": 7}}, "window_end_month"),
    ({2018: {"window_start_month": 7, "window_end_month": 7, "steps": 73}}, "Extra inputs are not permitted"),
    ({2010: {"window_start_month": 7, "window_end_month": 7}}, "year_windows names year(s) [2010] outside"),
])
def test_bad_year_windows_name_the_field_and_the_rule(year_windows, words):
    from clcplus_ops.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="time_series") as info:
        parse_config({"time_series": {"year_windows": year_windows}}, "test.yaml")
    assert words in str(info.value)


def test_year_windows_survive_the_yaml_round_trip():
    from clcplus_ops.config import Config, parse_config

    shown = yaml.safe_load(Config().to_yaml())
    assert shown["time_series"]["year_windows"] == {"2018": {"window_start_month": 7, "window_end_month": 7,
                                                             "n_steps": 73}}
    assert parse_config(shown).time_series.for_year(2018) == Config().time_series.for_year(2018)
