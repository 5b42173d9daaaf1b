"""Acquisition dates, platforms, times, orbits and sun geometry of the synthetic archive.

Dates follow the Sentinel-2 constellation's revisit: every ``revisit_days`` days counted from
the anchor 2015-06-27 (the first day of Sentinel-2A data in Earth Search's Collection-1
extent, ``2015-06-27T10:25:31Z``). With the nominal 5-day revisit the two satellites, 180°
apart on the same ground track, alternate: slots counted from the anchor are Sentinel-2A on
even and Sentinel-2B on odd numbers (for another revisit the satellite is that of the
5-day slot the date falls in). Sentinel-2B slots start with its commissioning
(2017-07-01: earlier odd slots are skipped); Sentinel-2C took over from Sentinel-2A on
2025-01-21, so later even slots are S2C. Over an area at 13-16°E (the demo's Slovenian coast)
the descending pass is at about 10:00 UTC; each date gets a deterministic jitter of a few
minutes. All these are properties of the date alone (not of the window or the seed), so two
reference years' windows agree where they overlap.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

ANCHOR = dt.date(2015, 6, 27)
S2B_FIRST = dt.date(2017, 7, 1)
S2C_REPLACES_S2A = dt.date(2025, 1, 21)
RELATIVE_ORBIT = 122
LAUNCH = {"sentinel-2a": dt.date(2015, 6, 23), "sentinel-2b": dt.date(2017, 3, 7), "sentinel-2c": dt.date(2024, 9, 5)}
ORBITS_PER_DAY = 143 / 10  # 143 orbits per 10-day repeat cycle


@dataclass(frozen=True)
class Acquisition:
    index: int  # position in the window
    slot: int  # revisit slot counted from ANCHOR
    datetime: dt.datetime  # UTC, millisecond precision
    platform: str  # "sentinel-2a" | "sentinel-2b" | "sentinel-2c"

    @property
    def date(self) -> dt.date:
        return self.datetime.date()

    @property
    def mission(self) -> str:
        """"S2A", "S2B", "S2C"."""
        return "S2" + self.platform[-1].upper()

    @property
    def absolute_orbit(self) -> int:
        days = (self.datetime.date() - LAUNCH[self.platform]).days
        return 1 + int(days * ORBITS_PER_DAY)

    @property
    def datastrip_start(self) -> dt.datetime:
        """Sensing start of the datastrip (a few minutes before the granule's sensing time);
        the time in the item id."""
        return (self.datetime - dt.timedelta(seconds=202)).replace(microsecond=0)

    @property
    def datatake_start(self) -> dt.datetime:
        return self.datastrip_start + dt.timedelta(seconds=4)

    @property
    def generation_time(self) -> dt.datetime:
        """When the ground segment made the L2A product (~1 h after sensing)."""
        return (self.datetime + dt.timedelta(minutes=57, seconds=self.slot % 60)).replace(microsecond=0)


def platform_for(day: dt.date) -> str | None:
    """The satellite over the ground track on ``day``: the 5-day slots since ``ANCHOR``
    alternate between Sentinel-2A (later 2C) on even and 2B on odd slots; None where that
    satellite was not flying yet."""
    if ((day - ANCHOR).days // 5) % 2:
        return "sentinel-2b" if day >= S2B_FIRST else None
    return "sentinel-2c" if day >= S2C_REPLACES_S2A else "sentinel-2a"


def acquisitions(start: dt.date, end: dt.date, revisit_days: int) -> list[Acquisition]:
    """The acquisitions in [start, end): one per revisit slot with a platform flying."""
    first = max(0, -(-(start - ANCHOR).days // revisit_days))
    found = []
    slot = first
    while (day := ANCHOR + dt.timedelta(days=slot * revisit_days)) < end:
        platform = platform_for(day)
        if platform is not None and day >= start:
            # Deterministic jitter of the overpass: -2..+6 minutes around 10:00 UTC.
            jitter_ms = (day.toordinal() * 7_919_321) % 480_000 - 120_000
            when = dt.datetime(day.year, day.month, day.day, 10, 0, tzinfo=dt.timezone.utc)
            when += dt.timedelta(milliseconds=jitter_ms)
            found.append(Acquisition(len(found), slot, when, platform))
        slot += 1
    return found


def sun_position(when: dt.datetime, lon: float, lat: float) -> tuple[float, float]:
    """(azimuth from north clockwise, elevation) of the sun in degrees (NOAA approximations)."""
    doy = when.timetuple().tm_yday
    hour = when.hour + when.minute / 60 + when.second / 3600
    gamma = 2 * math.pi / 365 * (doy - 1 + (hour - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(gamma) - 0.032077 * math.sin(gamma)
                       - 0.014615 * math.cos(2 * gamma) - 0.040849 * math.sin(2 * gamma))
    decl = (0.006918 - 0.399912 * math.cos(gamma) + 0.070257 * math.sin(gamma)
            - 0.006758 * math.cos(2 * gamma) + 0.000907 * math.sin(2 * gamma)
            - 0.002697 * math.cos(3 * gamma) + 0.00148 * math.sin(3 * gamma))
    solar_minutes = hour * 60 + eqtime + 4 * lon
    hour_angle = math.radians(solar_minutes / 4 - 180)
    phi = math.radians(lat)
    cos_zenith = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    zenith = math.acos(max(-1.0, min(1.0, cos_zenith)))
    azimuth = math.degrees(math.atan2(
        math.sin(hour_angle),
        math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi),
    )) + 180.0
    return azimuth % 360.0, 90.0 - math.degrees(zenith)


def earth_sun_factor(day: dt.date) -> float:
    """The reflectance conversion factor (1 / d², d the Earth-Sun distance in AU)."""
    doy = day.timetuple().tm_yday
    return 1.0 / (1.0 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))) ** 2
