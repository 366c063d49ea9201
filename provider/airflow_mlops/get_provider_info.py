"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Validated in tests against ``airflow/provider_info.schema.json`` of the installed Airflow.
"""

from __future__ import annotations

from typing import Any

_PKG = "airflow_mlops"


def _modules(kind: str, *names: str) -> list[str]:
    return [f"{_PKG}.{kind}.{name}" for name in names]


def _string_field(label: str, description: str | None = None, **schema: Any) -> dict[str, Any]:
    field: dict[str, Any] = {"label": label, "schema": {"type": ["string", "null"], **schema}}
    if description:
        field["description"] = description
    return field


def _connection_types() -> list[dict[str, Any]]:
    return [
        {
            "hook-class-name": f"{_PKG}.hooks.mlflow.MlflowHook",
            "hook-name": "MLflow",
            "connection-type": "mlflow",
            "conn-fields": {
                "experiment": _string_field(
                    "Default experiment", "Experiment used when an operator names none."
                ),
                "registry_uri": _string_field(
                    "Registry URI", "Model registry URI when it differs from the tracking URI."
                ),
            },
            "ui-field-behaviour": {
                "hidden-fields": ["schema", "port"],
                "relabeling": {"host": "Tracking URI", "login": "Username", "password": "Password or token"},
                "placeholders": {"host": "http://127.0.0.1:5000"},
            },
        },
        {
            "hook-class-name": f"{_PKG}.hooks.feast.FeastHook",
            "hook-name": "Feast",
            "connection-type": "feast",
            "conn-fields": {
                "repo_path": _string_field("Feature repo path", "Folder with the feature definitions."),
                "project": _string_field("Project", default="flights"),
                "registry_path": _string_field("Registry path", "SQLite registry file (registry.db)."),
                "online_store": _string_field(
                    "Online store", "sqlite (default) or redis", enum=["sqlite", "redis", None]
                ),
                "online_store_path": _string_field("SQLite online store path"),
                "redis_connection_string": _string_field(
                    "Redis connection string", "host:port,db=0 (online_store = redis)"
                ),
            },
            "ui-field-behaviour": {
                "hidden-fields": ["host", "schema", "login", "port"],
                "relabeling": {"password": "Redis password"},
                "placeholders": {"password": "only for a Redis online store with AUTH"},
            },
        },
        {
            "hook-class-name": f"{_PKG}.hooks.seldon.SeldonHook",
            "hook-name": "Seldon",
            "connection-type": "seldon",
            "conn-fields": {
                "mode": _string_field(
                    "Mode",
                    "local (model servers on this machine, in the serving runtime), docker (on this "
                    "machine, in the serving image) or kubernetes; empty: [mlops] execution_mode",
                    enum=["local", "docker", "kubernetes", None],
                    default="local",
                ),
                "namespace": _string_field("Kubernetes namespace", default="default"),
                "kubernetes_conn_id": _string_field("Kubernetes connection id"),
            },
            "ui-field-behaviour": {
                "hidden-fields": ["schema", "login", "password", "port"],
                "relabeling": {"host": "Bind host (local mode)"},
                "placeholders": {"host": "127.0.0.1"},
            },
        },
    ]


def get_provider_info() -> dict[str, Any]:
    from airflow_mlops import __version__

    return {
        "package-name": "airflow-provider-mlops",
        "name": "MLOps",
        "description": "The ML lifecycle from DAG files: ingestion, Great Expectations validation, "
        "Feast features, Horovod training, MLflow registry, Seldon serving and alibi-detect drift.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "MLOps", "external-doc-url": "https://github.com/", "tags": ["software"]}
        ],
        "operators": [
            {
                "integration-name": "MLOps",
                "python-modules": _modules(
                    "operators",
                    *("ingest", "validate", "feast", "train", "select", "registry", "deploy", "drift"),
                ),
            }
        ],
        "hooks": [
            {
                "integration-name": "MLOps",
                "python-modules": _modules(
                    "hooks",
                    *(
                        "mlflow",
                        "feast",
                        "great_expectations",
                        "seldon",
                        "seldon_kubernetes",
                        "runtime",
                        "kubernetes",
                    ),
                ),
            }
        ],
        "sensors": [
            {
                "integration-name": "MLOps",
                "python-modules": _modules("sensors", "dataset", "feast", "mlflow", "seldon"),
            }
        ],
        "triggers": [
            {
                "integration-name": "MLOps",
                "python-modules": _modules(
                    "triggers", "dataset", "feast", "kubernetes", "mlflow", "seldon", "drift"
                ),
            }
        ],
        "connection-types": _connection_types(),
        # Asset URIs whose OpenLineage datasets this provider names (airflow_mlops.lineage): Feast
        # feature views (hook lineage of FeastHook) and the x-mlops:// Assets (the drift Asset)
        "asset-uris": [
            {
                "schemes": ["feast"],
                "handler": f"{_PKG}.lineage.sanitize_uri",
                "factory": f"{_PKG}.lineage.create_feature_view_asset",
                "to_openlineage_converter": f"{_PKG}.lineage.convert_asset_to_openlineage",
            },
            {
                "schemes": ["x-mlops"],
                "handler": None,
                "to_openlineage_converter": f"{_PKG}.lineage.convert_asset_to_openlineage",
            },
        ],
        "extra-links": [
            f"{_PKG}.links.mlflow.MlflowRunLink",
            f"{_PKG}.links.mlflow.MlflowModelVersionLink",
            f"{_PKG}.links.mlflow.MlflowParentRunLink",
            f"{_PKG}.links.seldon.SeldonEndpointLink",
            f"{_PKG}.links.great_expectations.DataDocsLink",
            f"{_PKG}.links.drift.DriftReportLink",
        ],
        "config": {
            "mlops": {
                "description": "Where the MLOps provider keeps its files and finds its runtime environments.",
                "options": {
                    "data_dir": {
                        "description": "Root for dataset snapshots, features, reports and local "
                        "deployments: a local path (default $AIRFLOW_HOME/mlops) or an object-store "
                        "URL (s3://bucket/prefix) reached through data_conn_id. With a URL, dataset "
                        "snapshots and feature tables go to the store (docs/deployment.md says what "
                        "else does so far); the rest stays in local_data_dir.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://ml-bucket/mlops",
                        "default": "",
                    },
                    "data_conn_id": {
                        "description": "Airflow connection an object-store data_dir is read and "
                        "written with (Airflow's ObjectStoragePath): an aws connection for s3://, "
                        "with endpoint_url in its extra for an S3-compatible server.",
                        "version_added": "0.4.0",
                        "type": "string",
                        "example": "aws_default",
                        "default": "",
                    },
                    "local_data_dir": {
                        "description": "This host's folder when data_dir is an object-store URL "
                        "(local deployments' processes, drift worker sockets); defaults to "
                        "$AIRFLOW_HOME/mlops.",
                        "version_added": "0.4.0",
                        "type": "string",
                        "example": "/var/lib/airflow/mlops",
                        "default": "",
                    },
                    "serving_queue": {
                        "description": "Celery queue the Seldon operators (deploy, promote, "
                        "rollback) run on unless a task or its default_args names one: the queue "
                        "only the serving host's worker takes, since a local deployment is "
                        "processes on one host. Empty: the default queue.",
                        "version_added": "0.4.0",
                        "type": "string",
                        "example": "serving",
                        "default": "",
                    },
                    "ui_mlflow_conn_id": {
                        "description": "MLflow connection the MLOps page of the Airflow UI reads "
                        "registered models from.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "mlflow_default",
                        "default": "mlflow_default",
                    },
                    "ui_retrain_dag_id": {
                        "description": "DAG the MLOps page's Retrain button triggers for every model; "
                        "empty: the DAGs with a MlflowRegisterModelOperator of the model (default the one "
                        "that trained the champion).",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "flights_delay_retrain",
                        "default": "",
                    },
                    "ui_rollback_dag_id": {
                        "description": "DAG the MLOps page's Roll back button triggers for every "
                        "deployment; empty: the DAGs with a SeldonRollbackOperator of the deployment.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "flights_delay_rollback",
                        "default": "",
                    },
                    "execution_mode": {
                        "description": "Where training, serving and drift run when an operator (or the "
                        "seldon connection) names no mode: local (the runtime environments), docker (the "
                        "runtime images through the Docker API) or kubernetes.",
                        "version_added": "0.3.0",
                        "type": "string",
                        "example": "docker",
                        "default": "local",
                    },
                    "docker_url": {
                        "description": 'Docker Engine API that mode="docker" operators run their '
                        "runtime's image through (Docker's, or podman's `podman system service` socket). "
                        "Empty: $DOCKER_HOST, else unix:///var/run/docker.sock.",
                        "version_added": "0.3.0",
                        "type": "string",
                        "example": "unix:///run/podman/podman.sock",
                        "default": "",
                    },
                    "runtimes_dir": {
                        "description": "Folder holding the training, serving and drift virtual "
                        "environments (one sub-folder each) used in local mode.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/mlops/runtimes",
                        "default": "",
                    },
                },
            }
        },
    }
