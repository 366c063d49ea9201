"""Feast definitions for the flight-delay example: hourly weather per origin airport.

The offline sources are the ``current/`` folders of the snapshots written by the ingest
task (``$MLOPS_DATA_DIR/datasets/<dataset>/current/<interval>.parquet``: the latest version
of each interval, so a re-ingested interval is read once, not once per version; the Feast
hook sets MLOPS_DATA_DIR to the provider's ``[mlops] data_dir``, a folder or an ``s3://`` URL).
Point ``path`` at your own Parquet folder or bucket.

For an ``s3://`` data dir the hook also sets the data connection's credentials and endpoint
as the AWS SDK's variables while Feast reads; ``s3_endpoint_override`` passes the endpoint on
to Feast's pyarrow reader, which does not read ``AWS_ENDPOINT_URL_S3`` itself (None: AWS).
"""

import os
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64

DATA_DIR = os.environ.get("MLOPS_DATA_DIR", "/tmp/airflow-mlops")
S3_ENDPOINT = os.environ.get("AWS_ENDPOINT_URL_S3") if DATA_DIR.startswith("s3://") else None

airport = Entity(
    name="origin",
    join_keys=["origin"],
    value_type=ValueType.STRING,
    description="New York departure airport (EWR, JFK, LGA)",
)

weather_snapshots = FileSource(
    name="weather_snapshots",
    path=os.path.join(DATA_DIR, "datasets", "weather", "current"),
    timestamp_field="time_hour",
    s3_endpoint_override=S3_ENDPOINT,
)

weather_hourly = FeatureView(
    name="weather_hourly",
    entities=[airport],
    # a flight sees the weather of its departure hour, or at most 3 hours older
    ttl=timedelta(hours=3),
    schema=[
        Field(name=name, dtype=Float64)
        for name in ("temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib")
    ],
    source=weather_snapshots,
    online=True,
)


carrier = Entity(
    name="carrier",
    join_keys=["carrier"],
    value_type=ValueType.STRING,
    description="Airline code (UA, AA, B6, ...)",
)

carrier_daily_snapshots = FileSource(
    name="carrier_daily_snapshots",
    path=os.path.join(DATA_DIR, "datasets", "carrier_daily", "current"),
    # a day's statistics are known once the day is over: stamped at the next midnight (UTC),
    # so a flight never sees statistics that include itself or later flights of its day
    timestamp_field="event_timestamp",
    s3_endpoint_override=S3_ENDPOINT,
)

carrier_daily = FeatureView(
    name="carrier_daily",
    entities=[carrier],
    ttl=timedelta(days=3),
    schema=[
        Field(name="carrier_flights", dtype=Float64),
        Field(name="carrier_dep_delay_mean", dtype=Float64),
        Field(name="carrier_delayed_share", dtype=Float64),
    ],
    source=carrier_daily_snapshots,
    online=True,
)
