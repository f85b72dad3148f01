"""The SMART JavaScript client (npm ``fhirclient``) in Chromium, from a second origin (A6, A8, A12, C8).

The app is a page of our own on ``http://localhost:PORT`` while the server is on
``http://127.0.0.1:PORT2``: two origins, so every call the client makes to the server is
cross-origin, and the FHIR read needs CORS (a preflight for its Authorization header).
The page runs a standalone launch as a patient: ``FHIR.oauth2.authorize`` (discovery,
PKCE S256), the server's login and consent pages, back to the app, ``FHIR.oauth2.ready()``
(the token exchange) and ``client.request("Communication?...")``. The test compares what
the page shows with the messages seeded for that patient.

The client is not vendored: ``tests/browser/smart_js/package.json`` and its lock pin it,
and the ``fhirclient_js`` fixture runs ``npm ci`` there when ``node_modules`` is missing
(optional dependencies and install scripts left out: only the browser bundle is served).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.browser.conftest import Person, Stack
from tests.browser.test_webmail_flows import sign_in
from tests.factories import message_json
from tests.support import free_port, missing_service, uid, wait_until

pytestmark = pytest.mark.browser

SMART_JS = Path(__file__).parent / "smart_js"
BUNDLE = SMART_JS / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
SCOPE = "launch/patient patient/Communication.rs patient/Patient.rs openid fhirUser"

LAUNCH_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Launch</title></head>
<body><p id="status">Connecting...</p>
<script src="/fhir-client.js"></script>
<script>
FHIR.oauth2.authorize(__OPTIONS__).catch(function (e) {
  document.getElementById("status").textContent = "error: " + e;
});
</script></body></html>
"""

APP_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Messages</title></head>
<body><h1>My messages</h1><p id="status">Loading...</p><p id="count"></p><ul id="ids"></ul>
<script src="/fhir-client.js"></script>
<script>
var statusLine = document.getElementById("status");  // not `status`: window.status is a string
FHIR.oauth2.ready().then(function (client) {
  var query = "Communication?patient=" + encodeURIComponent(client.patient.id) + "&_count=50";
  return client.request(query, { pageLimit: 0, flat: true }).then(function (entries) {
    var ids = entries.map(function (c) { return c.id; }).sort();
    document.getElementById("count").textContent = String(ids.length);
    ids.forEach(function (id) {
      var li = document.createElement("li");
      li.textContent = id;
      document.getElementById("ids").appendChild(li);
    });
    statusLine.textContent = "done for Patient/" + client.patient.id;
  });
}).catch(function (e) {
  statusLine.textContent = "error: " + e;
});
</script></body></html>
"""


@pytest.fixture(scope="session")
def fhirclient_js(stack: Stack) -> Path:
    """The pinned fhirclient bundle, installed from the npm registry by ``npm ci`` when missing."""
    if not BUNDLE.exists():
        npm = shutil.which("npm")
        if npm is None:
            missing_service("npm", FileNotFoundError("npm"))
        subprocess.run(
            [str(npm), "ci", "--no-audit", "--no-fund", "--omit=optional", "--ignore-scripts"],
            cwd=SMART_JS,
            check=True,
            capture_output=True,
            timeout=300,
        )
    assert BUNDLE.exists(), "npm ci did not install fhirclient's browser bundle"
    return BUNDLE


class _AppServer:
    """The app's origin: a static HTTP server of three files on http://localhost:PORT."""

    def __init__(self, files: dict[str, tuple[str, bytes]]) -> None:
        port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                found = files.get(self.path.split("?", 1)[0])
                if found is None:
                    self.send_error(404)
                    return
                ctype, body = found
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: the URLs carry codes
                return

        self.origin = f"http://localhost:{port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture()
def smart_app(stack: Stack, fhirclient_js: Path) -> Iterator[tuple[_AppServer, str]]:
    """The app served from its own origin, and its client registration (a public client)."""
    from smart_auth import clients

    client_id = f"smart-js-{uid()}"
    files: dict[str, tuple[str, bytes]] = {"/fhir-client.js": ("text/javascript", fhirclient_js.read_bytes())}
    server = _AppServer(files)
    try:
        options = {
            "clientId": client_id,
            "scope": SCOPE,
            "redirectUri": "app.html",
            "iss": stack.url + "/fhir",
            "pkceMode": "required",
        }
        files["/launch.html"] = ("text/html", LAUNCH_HTML.replace("__OPTIONS__", json.dumps(options)).encode())
        files["/app.html"] = ("text/html", APP_HTML.encode())
        with stack.session() as session:
            clients.register_client(
                session,
                client_id=client_id,
                name="Messages (JS)",
                redirect_uris=[server.origin + "/app.html"],
                scope=SCOPE,
            )
            session.commit()
        # The server reads its CORS allowlist every few seconds: wait until it knows the app.
        wait_until(lambda: _preflight_allowed(stack, server.origin), what="the app's origin in the CORS allowlist")
        yield server, client_id
    finally:
        server.stop()


def _preflight_allowed(stack: Stack, origin: str) -> bool:
    r = requests.options(
        stack.url + "/fhir/Communication",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    return r.headers.get("Access-Control-Allow-Origin") == origin


def _seed_messages(stack: Stack, patient: Person, provider: Person, n: int) -> list[str]:
    with stack.session() as session:
        repo = stack._repo(session)
        ids = [
            repo.create(
                "Communication", message_json(patient.ref, provider.ref, patient.ref, topic=f"Question {i}")
            ).res_id
            for i in range(n)
        ]
        session.commit()
    return sorted(ids)


def test_A6_smart_js_client_standalone_launch_reads_the_patients_messages(
    stack: Stack, smart_app: tuple[_AppServer, str], new_page: Any, shot: Any
) -> None:
    server, _ = smart_app
    provider = stack.provider()
    patient = stack.patient([provider])
    other = stack.patient([provider])
    expected = _seed_messages(stack, patient, provider, 3)
    _seed_messages(stack, other, provider, 1)  # another patient's: never shown

    page: Page = new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))
    assert server.origin.split(":")[1] != stack.url.split(":")[1]  # localhost vs 127.0.0.1: two origins
    page.goto(server.origin + "/launch.html")
    sign_in(page, patient.username, patient.password)  # patients have no second factor
    expect(page.get_by_role("heading", name="Allow Messages (JS)")).to_be_visible()
    shot(page, "consent")
    page.get_by_role("button", name="Allow selected").click()

    page.wait_for_url(server.origin + "/app.html*")
    status = page.locator("#status")
    expect(status).not_to_have_text("Loading...", timeout=30_000)
    shot(page, "messages")
    assert status.inner_text() == f"done for {patient.ref}", (status.inner_text(), console)
    assert page.locator("#count").inner_text() == str(len(expected))
    assert page.locator("#ids li").all_inner_texts() == expected
