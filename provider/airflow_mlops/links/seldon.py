"""Extra link from a deployment task to the endpoint it serves."""

from __future__ import annotations

from airflow_mlops.links.mlflow import _XComUrlLink


class SeldonEndpointLink(_XComUrlLink):
    """Opens the deployed model's Seldon endpoint."""

    name = "Seldon endpoint"
