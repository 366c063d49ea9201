"""Request stored Data Docs through Airflow's real API app with the provider's plugin mounted.

Usage: ``python ge_plugin_auth.py RESULT.json`` with ``AIRFLOW_HOME``, ``AIRFLOW__MLOPS__DATA_DIR``
and ``AIRFLOW__API_AUTH__JWT_SECRET`` set. Builds the API server's FastAPI app the way
``airflow api-server`` does (plugins from the ``airflow.plugins`` entry point, or from the
plugins folder while the installed metadata predates that entry point) and dumps the
status and body of each request as JSON.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

ENTRY_POINT = "airflow_mlops.plugins.mlops_view:MlopsPlugin"


def main(result_path: str) -> None:
    data_dir = Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"])
    page = (
        data_dir
        / "data_docs"
        / "flights_dag"
        / "manual__2024-01-01T00:00:00+00:00"
        / "validate"
        / "index.html"
    )
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<html>flights suite</html>")
    (data_dir / "secret.txt").write_text("not for the browser")

    registered = any(
        ep.value == ENTRY_POINT for ep in importlib.metadata.entry_points(group="airflow.plugins")
    )
    if not registered:  # editable install not refreshed since the entry point was added
        plugins = Path(os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"])
        (plugins / "mlops_data_docs.py").write_text(
            "from airflow_mlops.plugins.data_docs import MlopsDataDocsPlugin  # noqa: F401\n"
        )

    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.utils.db import upgradedb
    from fastapi.testclient import TestClient

    upgradedb()  # token checks read the revoked-token table

    client = TestClient(create_app())
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    url = "/mlops/data-docs/flights_dag/manual__2024-01-01T00%3A00%3A00%2B00%3A00/validate/index.html"
    requests = {
        "anonymous": (url, {}, {}),
        "bad_token": (url, {"Authorization": "Bearer not-a-jwt"}, {}),
        "bearer": (url, {"Authorization": f"Bearer {token}"}, {}),
        "cookie": (url, {}, {"_token": token}),
        "traversal": (
            "/mlops/data-docs/flights_dag/%2E%2E/%2E%2E/secret.txt",
            {"Authorization": f"Bearer {token}"},
            {},
        ),
        "missing": ("/mlops/data-docs/flights_dag/nothing.html", {"Authorization": f"Bearer {token}"}, {}),
    }
    result = {"entry_point_registered": registered}
    for name, (path, headers, cookies) in requests.items():
        client.cookies.clear()
        for key, value in cookies.items():
            client.cookies.set(key, value)
        response = client.get(path, headers=headers)
        result[name] = {"status": response.status_code, "body": response.text[:500]}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
