"""Feast 0.67: the feature store of a ``feast`` connection.

``import feast`` costs ~20 s, so the store is built on first use, never at DAG-parse time.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_mlops import settings
from airflow_mlops._imports import require

if TYPE_CHECKING:
    import pandas as pd

#: environment variable feature definitions may use to locate the provider's snapshots
DATA_DIR_ENV = "MLOPS_DATA_DIR"


class FeastHook(BaseHook):
    """
    Build a Feast ``FeatureStore`` from a ``feast`` connection.

    Connection extras: ``repo_path`` (folder of feature definitions), ``project``,
    ``registry_path``, ``online_store`` (``sqlite`` default or ``redis``), ``online_store_path``
    (SQLite file), ``redis_connection_string`` (``host:port,db=N``). The offline store is the
    file store: feature views read the provider's Parquet snapshots.

    :param feast_conn_id: the ``feast`` connection.
    :param repo_path: overrides the connection's feature repo folder.
    """

    conn_name_attr = "feast_conn_id"
    default_conn_name = "feast_default"
    conn_type = "feast"
    hook_name = "Feast"

    def __init__(self, feast_conn_id: str = default_conn_name, repo_path: str | None = None) -> None:
        super().__init__()
        self.feast_conn_id = feast_conn_id
        self._repo_path = repo_path

    @cached_property
    def extras(self) -> dict[str, Any]:
        return self.get_connection(self.feast_conn_id).extra_dejson

    @property
    def repo_path(self) -> Path:
        path = self._repo_path or self.extras.get("repo_path")
        if not path:
            raise ValueError(
                f"Connection '{self.feast_conn_id}' names no feature repo: set extra 'repo_path' "
                "or pass repo_path to the operator."
            )
        return Path(path).resolve()

    def online_store_config(self) -> dict[str, Any]:
        kind = (self.extras.get("online_store") or "sqlite").lower()
        if kind == "redis":
            conn = self.extras.get("redis_connection_string") or "127.0.0.1:6379"
            return {"type": "redis", "connection_string": conn}
        if kind != "sqlite":
            raise ValueError(
                f"Unsupported online_store '{kind}' in '{self.feast_conn_id}': use sqlite or redis."
            )
        default = settings.data_dir() / "feast" / "online_store.db"
        return {"type": "sqlite", "path": str(self.extras.get("online_store_path") or default)}

    @cached_property
    def repo_config(self):
        feast = require("feast", "feast")
        registry = self.extras.get("registry_path") or str(settings.data_dir() / "feast" / "registry.db")
        Path(registry).parent.mkdir(parents=True, exist_ok=True)
        online = self.online_store_config()
        if online["type"] == "sqlite":
            Path(online["path"]).parent.mkdir(parents=True, exist_ok=True)
        return feast.RepoConfig(
            project=self.extras.get("project") or "flights",
            registry=registry,
            provider="local",
            online_store=online,
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
            repo_path=self.repo_path,
        )

    @cached_property
    def store(self):
        feast = require("feast", "feast")
        return feast.FeatureStore(config=self.repo_config)

    @contextlib.contextmanager
    def _in_repo(self):
        """Feast parses definitions relative to the cwd; give them the provider's data dir too."""
        cwd = os.getcwd()
        os.environ.setdefault(DATA_DIR_ENV, str(settings.data_dir()))
        # feast imports each definitions file as a module named by its path in the repo
        sys.path.insert(0, str(self.repo_path))
        try:
            yield
        finally:
            os.chdir(cwd)
            sys.path.remove(str(self.repo_path))

    def apply(self) -> dict[str, list[str]]:
        """Register the repo's definitions (``feast apply``); returns the feature views and entities."""
        from feast.repo_operations import apply_total

        with self._in_repo():
            apply_total(self.repo_config, self.repo_path, skip_source_validation=False)
        # a fresh store sees what apply just wrote to the registry
        self.__dict__.pop("store", None)
        return {
            "feature_views": sorted(fv.name for fv in self.store.list_feature_views()),
            "entities": sorted(e.name for e in self.store.list_entities()),
        }

    def materialize(self, start: datetime, end: datetime, feature_views: list[str] | None = None) -> None:
        """Load feature values with event time in ``[start, end]`` into the online store."""
        self.store.materialize(start_date=start, end_date=end, feature_views=feature_views)

    def online_features(self, features: list[str], entity_rows: list[dict[str, Any]]) -> dict[str, list]:
        return self.store.get_online_features(features=features, entity_rows=entity_rows).to_dict()

    def historical_features(self, entity_df: pd.DataFrame, features: list[str]) -> pd.DataFrame:
        """Point-in-time-correct feature values for each row of ``entity_df`` (needs ``event_timestamp``)."""
        return self.store.get_historical_features(entity_df=entity_df, features=features).to_df()

    def test_connection(self) -> tuple[bool, str]:
        try:
            views = self.store.list_feature_views()
            return True, f"Feast registry reachable: {len(views)} feature view(s)."
        except Exception as err:  # report, do not raise, as Airflow's UI expects
            return False, str(err)
