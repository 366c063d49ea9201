"""The Data Docs plugin: mounted in Airflow's real API app, refuses unauthenticated callers.

The requests run in a fresh interpreter (``_jobs/ge_plugin_auth.py``: Airflow reads its
configuration at import) against the API server's own FastAPI app with FastAPI's TestClient.

Data Docs work offline (``_jobs/ge_data_docs_offline.py``): a real site GE rendered is served
with every CDN URL rewritten to the provider's vendored copies, which the app serves behind
authentication; nothing in a served page points to another origin. (The same site in a real
browser, recording every request: ``tests/system/test_data_docs_offline.py``.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import HTTPException

REPO = Path(__file__).resolve().parents[3]
JOBS = {"ge-plugin-auth": "ge_plugin_auth", "ge-data-docs-offline": "ge_data_docs_offline"}
VENDOR_PREFIX = "/mlops/static/vendor/"
#: hosts GE's templates load assets from: none may be left in a served page
CDN_HOSTS = (
    "cdn.jsdelivr.net",
    "cdnjs.cloudflare.com",
    "code.jquery.com",
    "maxcdn.bootstrapcdn.com",
    "stackpath.bootstrapcdn.com",
    "unpkg.com",
    "great-expectations-web-assets",
)
#: every URL a page or stylesheet refers to (attributes, CSS ``url()`` and ``@import``)
REFERENCE = re.compile(
    r"""\s(src|href|srcset|action|poster|data)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))"""
    r"""|url\(\s*["']?([^"')]*)["']?\s*\)|@import\s+["']([^"']*)["']""",
    re.IGNORECASE,
)
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".png": "image/png",
    ".ico": "image/",
}


def start_jobs(jobs) -> None:
    for name, script in JOBS.items():
        work = jobs.workdir(name)
        args = ["requests"] if name == "ge-data-docs-offline" else []
        jobs.submit(
            name,
            [jobs.python, jobs.script(script), *args, work / "result.json"],
            env=jobs.airflow_env(
                work / "airflow-home",
                AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
                AIRFLOW__API_AUTH__JWT_SECRET="unit-test-secret-not-for-production",
            ),
        )


def _result(jobs, name: str) -> dict:
    start_jobs(jobs)
    jobs.result(name).check()
    return json.loads((jobs.workdir(name) / "result.json").read_text())


@pytest.fixture(scope="module")
def responses(jobs) -> dict:
    return _result(jobs, "ge-plugin-auth")


@pytest.fixture(scope="module")
def offline(jobs) -> dict:
    return _result(jobs, "ge-data-docs-offline")


def references(text: str) -> list[str]:
    return [next(g for g in m.groups()[1:] if g is not None) for m in REFERENCE.finditer(text)]


def is_external(url: str) -> bool:
    url = url.strip().lower()
    return url.startswith(("http:", "https:", "//", "\\\\", "/\\", "\\/")) or (
        ":" in url.split("/", 1)[0] and not url.startswith(("data:", "#", "javascript:"))
    )


def test_anonymous_request_is_refused(responses):
    assert responses["anonymous"]["status"] == 401
    assert "flights suite" not in responses["anonymous"]["body"]


def test_invalid_token_is_refused(responses):
    assert responses["bad_token"]["status"] == 403
    assert "flights suite" not in responses["bad_token"]["body"]


@pytest.mark.parametrize("how", ["bearer", "cookie"])
def test_authenticated_request_gets_the_page(responses, how):
    assert responses[how] == {"status": 200, "body": "<html>flights suite</html>"}


def test_nothing_outside_the_data_docs_folder_is_served(responses):
    assert responses["traversal"]["status"] == 404
    assert "not for the browser" not in responses["traversal"]["body"]
    assert responses["missing"]["status"] == 404


def test_resolve_refuses_traversal_and_links_out(tmp_path):
    from airflow_mlops.plugins.data_docs import resolve

    root = tmp_path / "data_docs"
    (root / "dag").mkdir(parents=True)
    (root / "dag" / "page.html").write_text("ok")
    (tmp_path / "secret").write_text("no")
    (root / "dag" / "link").symlink_to(tmp_path / "secret")
    assert resolve(root, "dag/page.html") == (root / "dag" / "page.html").resolve()
    for path in ("../secret", "dag/../../secret", "dag/link", "dag", "/etc/passwd"):
        with pytest.raises(HTTPException) as err:
            resolve(root, path)
        assert err.value.status_code == 404, path


def test_data_docs_owner_is_the_dag_of_the_resolved_path(tmp_path):
    """The DAG a file is authorized against (``dag_a/%2E%2E/dag_b/...`` is dag_b's file; per-DAG
    access through FAB: ``test_plugin_auth_fab.py``)."""
    from airflow_mlops.plugins.data_docs import owner

    root = tmp_path / "data_docs"
    for dag in ("dag_a", "dag_b"):
        (root / dag / "run").mkdir(parents=True)
        (root / dag / "run" / "page.html").write_text(dag)
    (root / "dag_a" / "run" / "to_b").symlink_to(root / "dag_b")
    (root / "dag_a" / "out").symlink_to(tmp_path)
    assert owner(root, "dag_a/run/page.html")[0] == "dag_a"
    assert owner(root, "dag_a/../dag_b/run/page.html") == ("dag_b", (root / "dag_b/run/page.html").resolve())
    assert owner(root, "dag_a/run/to_b/run/page.html")[0] == "dag_b"
    assert owner(root, "dag_a/run/nothing.html")[0] == "dag_a"  # the caller learns nothing before access
    for path in ("..", "dag_a/..", "dag_a/../../x", "dag_a/out/x", "/etc/passwd", ""):
        with pytest.raises(HTTPException) as err:
            owner(root, path)
        assert err.value.status_code == 404, path


def test_plugin_is_registered_by_entry_point():
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry_points["airflow.plugins"] == {"mlops": "airflow_mlops.plugins.mlops_view:MlopsPlugin"}
    # the old name (entry points of installs made before the MLOps view, plugins-folder imports)
    # is the same plugin, so both load it once
    from airflow_mlops.plugins.data_docs import MlopsDataDocsPlugin
    from airflow_mlops.plugins.mlops_view import MlopsPlugin

    assert MlopsDataDocsPlugin is MlopsPlugin
    (app,) = MlopsPlugin.fastapi_apps
    assert app["url_prefix"] == "/mlops"


def test_link_url_uses_the_api_base_url(monkeypatch):
    from airflow_mlops.links.great_expectations import data_docs_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    url = data_docs_url("dag/manual__2024-01-01T00:00:00+00:00/validate/site/index.html")
    assert url == (
        "https://airflow.example.com/mlops/data-docs/dag/manual__2024-01-01T00%3A00%3A00%2B00%3A00"
        "/validate/site/index.html"
    )


# --------------------------------------------------------------------------- offline Data Docs


def test_the_site_has_every_kind_of_page(offline):
    pages = list(offline["pages"])
    assert any(p.endswith("/site/index.html") for p in pages)
    assert any("/site/expectations/flights/delays.html" in p for p in pages)
    assert len([p for p in pages if "/site/validations/flights/delays/" in p]) == 2
    for url, page in offline["pages"].items():
        assert page["status"] == 200, url
        assert page["content_type"].startswith("text/html"), url
        assert "<html" in page["body"].lower(), url
        assert 'data-toggle="table"' in page["body"] or ".bootstrapTable(" in page["body"], url


def test_served_pages_refer_to_nothing_outside_their_origin(offline):
    for url, page in offline["pages"].items():
        refs = references(page["body"])
        assert len(refs) > 10, url
        external = [ref for ref in refs if is_external(ref)]
        assert external == [], url
        for host in CDN_HOSTS:
            assert host not in page["body"], (url, host)
        # the libraries themselves are there, from the provider's route
        resolved = {urlsplit(urljoin("http://testserver" + url, ref)).path for ref in refs}
        for asset in ("jquery-3.7.1/jquery.min.js", "bootstrap-4.3.1/css/bootstrap.min.css", "vega-5.33.1/"):
            assert any(p.startswith(VENDOR_PREFIX + asset) for p in resolved), (url, asset)


def test_links_to_web_pages_keep_their_text_but_lead_nowhere(offline):
    body = next(p["body"] for u, p in offline["pages"].items() if u.endswith("/index.html"))
    assert 'data-offline-href="https://greatexpectations.io"' in body
    assert ">Great Expectations</a>" in body


def test_served_pages_forbid_loading_from_other_origins(offline):
    for url, page in offline["pages"].items():
        policy = dict(d.strip().split(" ", 1) for d in page["csp"].split(";"))
        assert policy["default-src"] == "'self'", url
        for directive in ("script-src", "style-src", "img-src", "font-src", "connect-src"):
            sources = policy[directive].split()
            assert "'self'" in sources, (url, directive)
            assert not [s for s in sources if "://" in s or s in ("*", "http:", "https:")], (url, directive)


def test_every_rewritten_asset_answers_with_its_content_type(offline):
    assets = offline["assets"]
    vendored = {path: a for path, a in assets.items() if path.startswith(VENDOR_PREFIX)}
    # every vendored file GE's pages name, including the fonts Font Awesome's stylesheet names
    from airflow_mlops.plugins.data_docs import vendored_assets, vendored_site_files

    expected = {VENDOR_PREFIX + p for p in (*vendored_assets().values(), *vendored_site_files().values())}
    assert expected <= set(vendored)
    assert any(p.endswith("/webfonts/fa-solid-900.woff2") for p in vendored)
    for path, asset in assets.items():  # the pages' own files too (favicon, logo, other pages)
        assert asset["status"] == 200, (path, asset["referrer"], asset["status"])
        suffix = Path(path).suffix
        if suffix in CONTENT_TYPES:
            assert asset["content_type"].startswith(CONTENT_TYPES[suffix]), (path, asset["content_type"])
    for path, asset in vendored.items():
        assert asset["length"] > 0, path
    # the stylesheets they load refer to nothing outside either
    for path, asset in vendored.items():
        if "body" in asset:
            assert [r for r in references(asset["body"]) if is_external(r)] == [], path


def test_subresource_integrity_still_holds_for_the_vendored_files(offline):
    """GE pins popper.js and Bootstrap's JS with sha384 ``integrity``: the copies are the same bytes."""
    checked = 0
    for url, page in offline["pages"].items():
        for tag in re.findall(r"<(?:script|link)\b[^>]*\bintegrity=[^>]*>", page["body"]):
            integrity = re.search(r'integrity="([^"]*)"', tag)[1]
            ref = re.search(r'\s(?:src|href)="([^"]*)"', tag)[1]
            path = urlsplit(urljoin("http://testserver" + url, ref)).path
            assert path.startswith(VENDOR_PREFIX), (url, ref)
            assert offline["assets"][path]["sha384"] in integrity.split(), (url, path)
            checked += 1
    assert checked >= 2 * len(offline["pages"])


def test_vendored_files_need_an_authenticated_caller(offline):
    vendor = offline["vendor"]
    assert vendor["anonymous"]["status"] == 401
    assert vendor["dots_anonymous"]["status"] == 401
    assert vendor["bad_token"]["status"] == 403
    for how in ("bearer", "cookie"):
        assert vendor[how]["status"] == 200, how
        assert vendor[how]["content_type"].startswith("text/javascript"), how
        assert vendor[how]["text"].startswith("/*! jQuery v3.7.1"), how
    assert "jQuery" not in vendor["anonymous"]["text"]


@pytest.mark.parametrize(
    "name", ["encoded_dots", "encoded_dots_deep", "encoded_slash", "literal_dots", "folder", "missing"]
)
def test_vendored_route_refuses_traversal(offline, name):
    answer = offline["vendor"][name]
    assert answer["status"] == 404, answer
    assert "import" not in answer["text"] and "def " not in answer["text"]


# --------------------------------------------------------------------------- offline_html


def _offline(html: str) -> str:
    from airflow_mlops.plugins.data_docs import offline_html

    return offline_html(html, "../../static/vendor/")


def test_known_cdn_urls_become_vendored_copies():
    html = _offline(
        '<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>'
        "<LINK REL=stylesheet HREF=https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css>"
        "<script src='https://cdn.jsdelivr.net/npm/vega@5'></script>"
        '<img class="NO-CACHE" src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/'
        'logo-long.png?d=20240101T000000.000000Z&dataContextId=abc" alt="Great Expectations"/>'
        "<style>.navbar-brand a { background: url('https://great-expectations-web-assets.s3."
        "us-east-2.amazonaws.com/full_logo_dark.png') 0 0 no-repeat; }</style>"
    )
    assert '<script src="../../static/vendor/jquery-3.7.1/jquery.min.js"></script>' in html
    assert '<LINK REL=stylesheet HREF="../../static/vendor/bootstrap-4.3.1/css/bootstrap.min.css">' in html
    assert '<script src="../../static/vendor/vega-5.33.1/vega.min.js"></script>' in html
    assert 'src="../../static/vendor/great-expectations-1.24.1/images/logo-long.png" alt=' in html
    assert "url('../../static/vendor/great-expectations-1.24.1/images/logo-long.png') 0 0" in html
    assert "dataContextId" not in html  # GE's tracking query string goes with the S3 URL


def test_unknown_external_references_are_made_inert():
    html = _offline(
        '<img src="https://example.com/x.png"><script src="//cdn.example.com/x.js"></script>'
        '<link rel="stylesheet" href="HTTP://example.com/x.css"><div style="background:url(http://e.com/b.png)">'
        '<style>@import "https://fonts.example.com/f.css"; @font-face { src: url("//e.com/f.woff2") }</style>'
        '<a class="x" href="https://docs.example.com/page?a=1">the docs</a>'
    )
    assert [r for r in references(html) if is_external(r)] == []
    assert '<img src="data:,">' in html and '<script src="data:,"></script>' in html
    assert '<link rel="stylesheet" href="data:,">' in html
    assert "url('data:,')" in html and "@import 'data:,'" in html
    assert '<a class="x" data-offline-href="https://docs.example.com/page?a=1">the docs</a>' in html


def test_local_references_are_left_alone_but_the_favicon():
    page = (
        '<a href="../../index.html">Home</a><a href="#section-1">x</a><img src="static/images/x.gif">'
        '<link rel="shortcut icon" href="../../../../static/images/favicon.ico" type="image/x-icon"/>'
        '<a href="static/images/favicon.ico">icon</a><p>see https://example.com in text</p>'
    )
    html = _offline(page)
    assert html == page.replace(
        "../../../../static/images/favicon.ico",
        "../../static/vendor/great-expectations-1.24.1/images/favicon.ico",
    )


def test_vendored_urls_resolve_under_any_base_path():
    from airflow_mlops.plugins.data_docs import relative_vendor_url

    path = "dag/manual__2024-01-01T00:00:00+00:00/validate/site/validations/flights/delays/run/"
    path += "20240101T000000.000000Z/page.html"
    for base in ("https://airflow.example.com", "https://example.com/teams/airflow"):
        page = f"{base}/mlops/data-docs/{path}"
        assert urljoin(page, relative_vendor_url(path) + "jquery-3.7.1/jquery.min.js") == (
            f"{base}/mlops/static/vendor/jquery-3.7.1/jquery.min.js"
        )


# --------------------------------------------------------------------------- the vendored files


def test_every_cdn_url_of_the_installed_ge_is_vendored():
    """After a GE upgrade that changes its CDN URLs, run ``scripts/vendor_data_docs_assets.py``."""
    from airflow_mlops.plugins.data_docs import vendored_assets

    spec = importlib.util.find_spec("great_expectations")  # without importing it (~15 s)
    if spec is None:
        pytest.skip("great_expectations is not installed")
    view = Path(spec.submodule_search_locations[0]) / "render" / "view"
    loaded = set()
    for template in [*(view / "templates").glob("*.j2"), *(view / "static" / "styles").glob("*.css")]:
        text = template.read_text()
        loaded |= set(re.findall(r"<(?:script|link)\b[^>]*\s(?:src|href)=\"(https?://[^\"]+)\"", text))
        loaded |= set(re.findall(r"url\(['\"]?(https?://[^'\")]+)", text))
        for prefix in re.findall(r'static_images_dir = "(https?://[^"]+)"', text):
            loaded |= {prefix + name for name in re.findall(r'static_images_dir \+ "([^"]+)"', text)}
    assert len(loaded) >= 15
    assert sorted(loaded - set(vendored_assets())) == []


def test_vendored_files_match_their_manifest():
    from airflow_mlops.plugins.data_docs import VENDOR_DIR

    manifest = json.loads((VENDOR_DIR / "assets.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    on_disk = {p.relative_to(VENDOR_DIR).as_posix() for p in VENDOR_DIR.rglob("*") if p.is_file()}
    assert on_disk - {"assets.json", "README.md"} == set(listed)
    for path, digest in listed.items():
        assert hashlib.sha256((VENDOR_DIR / path).read_bytes()).hexdigest() == digest, path
    for path in (*manifest["assets"].values(), *manifest["site_files"].values()):
        assert path in listed
    readme = (VENDOR_DIR / "README.md").read_text()
    for folder in {p.split("/", 1)[0] for p in listed}:
        assert f"`{folder}/`" in readme, folder  # named with its version, licence and source
        assert any(p.startswith(folder + "/") and "LICENSE" in p for p in listed) or folder.startswith(
            "popper.js-"  # its licence is the header of its only file
        ), folder


def test_vendored_files_ship_in_the_wheel():
    """Hatchling leaves out what git ignores (``dist/``, ``build/`` anywhere): none of them may be."""
    from airflow_mlops.plugins.data_docs import VENDOR_DIR

    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(REPO)) for p in VENDOR_DIR.rglob("*") if p.is_file()]
    ignored = subprocess.run(
        [git, "check-ignore", "--no-index", "--stdin"],
        input="\n".join(files),
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == []
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["provider/airflow_mlops"]
