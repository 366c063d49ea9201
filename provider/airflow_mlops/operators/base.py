"""Base class of the provider's operators."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator


class MlopsBaseOperator(BaseOperator):
    """
    An operator whose dict result is also pushed key by key (``multiple_outputs``), so a
    downstream task can take one field as an argument: ``ingest.output["path"]``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
