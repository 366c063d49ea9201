"""Serve the stored Great Expectations Data Docs read-only, behind Airflow's authentication.

Mounted by the API server at ``/mlops`` (with the MLOps view, see :mod:`.mlops_view`):
``GET /mlops/data-docs/<dag_id>/<run_id>/<task_id>/...`` returns a file under
``[mlops] data_dir``/``data_docs``. FastAPI plugin apps are not protected by Airflow on their
own, so every request resolves the caller the way Airflow's own API does (the JWT of the
``Authorization: Bearer`` header, or the UI's ``_token`` cookie) and needs read access to the
task instances of the DAG that owns the file: the first folder of the file's path under the Data
Docs root *once resolved* (``..``, encoded or not, and symbolic links followed), not of the path
as requested — ``dag_a/%2E%2E/dag_b/...`` is dag_b's file and needs access to dag_b.

Data Docs must work without internet access: the pages GE writes load Bootstrap, jQuery,
Vega, Font Awesome... from public CDNs and GE's logo from S3. The provider ships copies of
those files (``static/vendor``, made by ``scripts/vendor_data_docs_assets.py``; its
``assets.json`` maps each CDN URL to its copy), served at ``GET /mlops/static/vendor/...``
to any authenticated caller. Every HTML page is rewritten when it is served (so sites stored
before this change work too): known CDN URLs point to the copies, by a URL relative to the
page (right under any ``[api] base_url`` path); any other external ``src``/``href``/CSS
``url()`` is made inert (links keep their text, their target moves to ``data-offline-href``).
A Content-Security-Policy header lets the browser load nothing from another origin.

Only light imports at module level: plugins are loaded by every Airflow process.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.responses import FileResponse, Response

from airflow_mlops.links.great_expectations import DATA_DOCS_ROUTE
from airflow_mlops.plugins import files
from airflow_mlops.plugins.auth import authorize_dag_tasks as _authorize
from airflow_mlops.plugins.auth import current_user as _user
from airflow_mlops.plugins.auth import page_user as _page_user

#: route (inside the app mounted at ``/mlops``) of the vendored Data Docs assets
VENDOR_ROUTE = "/static/vendor"
VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"

#: what a served Data Docs page may load: its own origin only (GE's inline scripts and
#: styles, Vega's compiled expressions, Bootstrap's inline SVG icons need the rest)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"
)
_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".png": "image/png",
    ".ico": "image/vnd.microsoft.icon",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_DEFAULT_MEDIA_TYPE = "text/plain; charset=utf-8"  # LICENSE files
#: what an external resource no vendored file stands for is replaced by: an empty document
_INERT = "data:,"

#: a start tag: its name, then anything up to the first ``>`` outside quotes. Possessive (no
#: backtracking), lenient (a stray quote is a character), and no match runs past a ``<``: every
#: search stops at the next tag, so a page costs linear time whatever it holds (``a<b`` in
#: inline scripts, unclosed quotes). A tag with a ``<`` in an attribute value is left as it is
#: (the Content-Security-Policy still keeps its references from loading).
_TAG = re.compile(r"<(?P<name>[a-zA-Z][\w:-]*)(?P<attrs>(?:\"[^\"<]*\"|'[^'<]*'|[^\"'<>]|[\"'])*+)>")
_URL_ATTR = re.compile(
    r"(?P<lead>\s)(?P<name>src|href)(?P<eq>\s*+=\s*+)(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"'>]++)", re.IGNORECASE
)
# neither runs past a parenthesis, quote, angle bracket or line end: linear time, as above
_CSS_URL = re.compile(r"url\(\s*+(?P<quote>[\"']?)(?P<url>[^\"'()<>\s]*+)(?P=quote)\s*+\)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import\s++(?P<quote>[\"'])(?P<url>[^\"'<>;\n]*+)(?P=quote)", re.IGNORECASE)


def data_docs_root() -> Any:
    """``[mlops] data_dir``/``data_docs``: a folder, or a prefix of the object store."""
    from airflow_mlops import storage

    return storage.data_root() / "data_docs"


def owner(root: Any, path: str, what: str = "Data Docs file") -> tuple[str, Any]:
    """
    ``(dag_id, file)``: the DAG whose folder holds what ``path`` names under ``root`` once
    resolved (``..`` and symbolic links followed), and that resolved path, which may not exist;
    404 for a path that leaves ``root`` or names ``root`` itself. In an object store (no links,
    no folders) ``..`` is resolved on the key, which cannot climb above ``root``.
    """
    parts, target = files.under(root, path, f"No {what} {path!r}.")
    return parts[0], target


def resolve(root: Path, path: str, what: str = "Data Docs file") -> Path:
    """The file ``path`` names under ``root``; 404 for anything else (``..``, links out, folders)."""
    return files.stored_file(root, path, f"No {what} {path!r}.")


@functools.cache
def _manifest() -> dict[str, Any]:
    return json.loads((VENDOR_DIR / "assets.json").read_text())


def vendored_assets() -> dict[str, str]:
    """CDN URL (as GE writes it) -> path of its copy under :data:`VENDOR_DIR`."""
    return _manifest()["assets"]


def vendored_site_files() -> dict[str, str]:
    """A site's own ``static/...`` file -> path of the copy served instead (GE's favicon)."""
    return _manifest().get("site_files", {})


def _is_external(url: str) -> bool:
    url = url.strip().lower()
    return url.startswith(("http:", "https:", "//", "\\\\", "/\\", "\\/"))


def _site_file_url(url: str, vendor_url: str) -> str | None:
    """The vendored copy of a relative reference to a site's own static file, if there is one."""
    path = urlsplit(url.strip()).path
    for name, copy in vendored_site_files().items():
        if path == name or path.endswith("/" + name):
            return vendor_url + copy
    return None


def _local_url(url: str, vendor_url: str) -> str | None:
    """The vendored copy of the external ``url``, by exact URL or without its query string."""
    assets = vendored_assets()
    url = url.strip()
    if url in assets:
        return vendor_url + assets[url]
    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme or "https", parts.netloc, parts.path, "", ""))
    return vendor_url + assets[bare] if bare in assets else None


def offline_html(html: str, vendor_url: str) -> str:
    """
    ``html`` of a Data Docs page with nothing loaded from another origin.

    :param vendor_url: URL of the vendored assets folder (ending with ``/``), relative to
        the page or absolute.
    """

    def css_url(match: re.Match) -> str:
        url = match["url"]
        if not _is_external(url):
            return match[0]
        return f"url('{_local_url(url, vendor_url) or _INERT}')"

    def css_import(match: re.Match) -> str:
        url = match["url"]
        if not _is_external(url):
            return match[0]
        return f"@import '{_local_url(url, vendor_url) or _INERT}'"

    def tag(match: re.Match) -> str:
        name = match["name"].lower()

        def attribute(attr: re.Match) -> str:
            raw = attr["value"]
            url = raw[1:-1] if raw[:1] in "\"'" else raw
            if not _is_external(url):
                # GE's validation pages point one folder short of their site's favicon
                local = None if name == "a" else _site_file_url(url, vendor_url)
                if local is None:
                    return attr[0]
            else:
                local = _local_url(url, vendor_url)
            if local is None and name == "a" and attr["name"].lower() == "href":
                # a link to a web page: no request until clicked, but none may be left; keep
                # its text and where it pointed
                return f'{attr["lead"]}data-offline-href="{url.replace(chr(34), "&quot;")}"'
            return f'{attr["lead"]}{attr["name"]}{attr["eq"]}"{local or _INERT}"'

        return (
            match[0][: match.start("attrs") - match.start()]
            + _URL_ATTR.sub(attribute, match["attrs"] or "")
            + match[0][match.end("attrs") - match.start() :]
        )

    html = _TAG.sub(tag, html)
    html = _CSS_IMPORT.sub(css_import, html)
    return _CSS_URL.sub(css_url, html)


def relative_vendor_url(path: str) -> str:
    """
    URL of the vendored assets folder relative to the Data Docs page ``path`` names.

    From the page's folder up to the app's root (``.../mlops/``): ``data-docs`` and each
    folder of ``path``. Relative, so it holds under any base path of the API server.
    """
    return "../" * (path.count("/") + 1) + VENDOR_ROUTE.strip("/") + "/"


router = APIRouter()


@router.get(DATA_DOCS_ROUTE + "/{path:path}", name="data_docs")
def data_docs(path: str, user: Annotated[Any, Depends(_page_user)]) -> Response:
    """A file of a stored Data Docs site, e.g. ``<dag_id>/<run_id>/<task_id>/site/index.html``."""
    # authorize the DAG that owns the file the path resolves to (before saying whether it exists)
    dag_id, target = owner(data_docs_root(), path)
    _authorize(user, dag_id)
    if not target.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"No Data Docs file {path!r}.")
    if target.suffix.lower() not in (".html", ".htm"):
        return files.file_response(target)
    html = target.read_bytes().decode("utf-8", errors="surrogateescape")
    body = offline_html(html, relative_vendor_url(path)).encode("utf-8", errors="surrogateescape")
    return Response(
        body,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


@router.get(VENDOR_ROUTE + "/{path:path}", name="data_docs_vendor")
def vendored_asset(path: str, user: Annotated[Any, Depends(_user)]) -> FileResponse:
    """A vendored asset of Data Docs pages (any authenticated caller: public libraries)."""
    target = resolve(VENDOR_DIR, path, what="vendored Data Docs asset")
    return FileResponse(
        target,
        media_type=_MEDIA_TYPES.get(target.suffix.lower(), _DEFAULT_MEDIA_TYPE),
        # the folder names carry the versions: a path never changes content
        headers={
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


def create_app() -> FastAPI:
    """The provider's app (Data Docs and the MLOps view), as mounted at ``/mlops``."""
    from airflow_mlops.plugins.mlops_view import create_app as create_mlops_app

    return create_mlops_app()


def __getattr__(name: str) -> Any:
    # The plugin used to live here as ``MlopsDataDocsPlugin`` (entry point and plugins-folder
    # imports still name it): it is now the one MLOps plugin, which also serves these files.
    if name == "MlopsDataDocsPlugin":
        from airflow_mlops.plugins.mlops_view import MlopsPlugin

        return MlopsPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
