"""A tiny headless-Chromium client for the browser tests, over the DevTools protocol.

``websockets`` only, no Selenium or driver; Chromium comes from Debian's packages
(``scripts/install_browser.sh``). Screenshots go to ``tests/system/artifacts/`` (or
``$MLOPS_TEST_ARTIFACTS``). The client records what a person would notice in the browser's
console: errors logged or thrown by a page (frames included) and requests that failed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

ARTIFACTS = Path(os.environ.get("MLOPS_TEST_ARTIFACTS", Path(__file__).parents[1] / "system" / "artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


class Browser:
    """
    Headless Chromium driven over the DevTools protocol: navigate, evaluate, type, screenshot.

    ``confirm()`` / ``alert()`` dialogs are accepted as they open and their messages kept in
    :attr:`dialogs` (a page that asks for confirmation blocks until the dialog is answered).

    :param profile: an empty folder for the browser profile (cookies of this session only).
    """

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.dialogs: list[str] = []
        #: console errors and uncaught exceptions of the pages (and their frames), as text
        self.console_errors: list[str] = []
        #: requests that failed (``URL: reason``) or answered 4xx/5xx (``URL: status``)
        self.failed_requests: list[str] = []
        #: every URL the pages requested, to check that nothing left 127.0.0.1
        self.requested: list[str] = []
        self._ids = itertools.count(1)
        self._urls: dict[str, str] = {}
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1440,1000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.port = self._devtools_port(profile)
        targets = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        self.target_id = page["id"]
        self._closing = ExitStack()
        self.ws = self._closing.enter_context(
            connect(
                page["webSocketDebuggerUrl"],
                max_size=None,
                open_timeout=30,
                # tests wait minutes between reads: no keepalive, and every event kept meanwhile
                ping_interval=None,
                max_queue=None,
            )
        )
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride", width=1440, height=1000, deviceScaleFactor=1, mobile=False
        )

    def _devtools_port(self, profile: Path, timeout: float = 60) -> int:
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{CHROMIUM} exited with {self.proc.returncode} at start")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.2)
        raise TimeoutError(f"{CHROMIUM} did not open its DevTools port within {timeout}s")

    def send(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self._record(message)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})

    def _record(self, message: dict[str, Any]) -> None:
        """Keep console errors, exceptions and failed requests from the event stream."""
        method, params = message.get("method"), message.get("params") or {}
        if method == "Page.javascriptDialogOpening":
            # accepted without waiting (the call that opened it is still pending); none of our
            # pages may open one: Airflow's iframe sandbox ignores dialogs
            self.dialogs.append(params["message"])
            answer = {
                "id": next(self._ids),
                "method": "Page.handleJavaScriptDialog",
                "params": {"accept": True},
            }
            self.ws.send(json.dumps(answer))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console_errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.console_errors.append(
                str((details.get("exception") or {}).get("description") or details["text"])
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.console_errors.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
        elif method == "Network.requestWillBeSent":
            self._urls[params["requestId"]] = params["request"]["url"]
            self.requested.append(params["request"]["url"])
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            self.failed_requests.append(f"{params['response']['url']}: {params['response']['status']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = self._urls.get(params["requestId"], params["requestId"])
            self.failed_requests.append(f"{url}: {params.get('errorText')}")

    def pump(self, seconds: float = 0.5) -> None:
        """Read the events that arrive within ``seconds`` (console and network records)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._record(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def reset_records(self) -> None:
        self.console_errors.clear()
        self.failed_requests.clear()
        self.requested.clear()

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
                if value:
                    return value
            except RuntimeError as err:  # the page is between documents
                last_error = err
            time.sleep(0.5)
        self.screenshot(f"failed-{int(time.time())}")  # what the page showed instead
        raise TimeoutError(
            f"{what or expression} not true within {timeout}s on {self.eval('location.href')} ({last_error})"
        )

    def type_into(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` the way a keyboard does (frameworks see input events)."""
        self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def click_at(self, x: float, y: float) -> None:
        """A real left click (the browser grants user activation, as for a person's click)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def pages(self) -> list[dict[str, Any]]:
        """The browser's open pages (tabs)."""
        targets = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=10).json()
        return [t for t in targets if t["type"] == "page"]

    def close_other_pages(self) -> None:
        for target in self.pages():
            if target["id"] != self.target_id:
                requests.get(f"http://127.0.0.1:{self.port}/json/close/{target['id']}", timeout=10)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._closing.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 15)  # the browser and its helper processes, by our pid
                self.proc.wait(timeout=30)


def log_in(browser: Browser, stack: Any) -> Browser:
    """Log in at Airflow's login page, as a person does, with the password ``stack`` generated."""
    from urllib.parse import quote

    browser.goto(f"{stack.airflow_url}/auth/login?next={quote(stack.airflow_url + '/')}")
    browser.wait_for("!!document.querySelector('input[name=username]')", what="the login form")
    browser.type_into("input[name=username]", stack.username)
    browser.type_into("input[name=password]", stack.password)
    browser.screenshot("01-login")
    browser.eval("document.querySelector('button[type=submit]').click()")
    browser.wait_for("!location.pathname.startsWith('/auth')", what="leaving the login page")
    cookies = browser.send("Network.getCookies", urls=[stack.airflow_url])["cookies"]
    assert any(c["name"] == "_token" for c in cookies), cookies
    return browser
