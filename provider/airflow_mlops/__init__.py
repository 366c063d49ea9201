"""airflow-provider-mlops: the ML lifecycle as Airflow operators."""

__version__ = "0.1.0"
