"""The browser demo's files as the controller serves them (real sockets, fake backend): the page is public,
self-contained (nothing from another origin) and locked down by its headers; the WebSocket still needs a key."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from controller.config import ControllerConfig
from controller.serve import ControllerThread
from controller.web import STATIC_DIR
from tests.controller_fakes import FakeBackend, FakeVad


def fetch(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_page_and_its_files_are_served_without_a_key():
    cfg = ControllerConfig(port=0, api_keys=("k1",))
    with ControllerThread(cfg, backend=FakeBackend(), vad=FakeVad()) as c:
        status, headers, body = fetch(c.port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        page = body.decode()
        local = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert "static/app.js" in local and "static/style.css" in local
        for ref in local:
            if ref.startswith("data:"):
                continue
            status, headers, body = fetch(c.port, "/" + ref)
            assert status == 200 and body, ref
        # the worklet is loaded by app.js: it must come back as JavaScript
        status, headers, body = fetch(c.port, "/static/capture-worklet.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert b'registerProcessor("pcm16-capture"' in body
        # the realtime endpoint itself still wants the key
        status, _, _ = fetch(c.port, "/v1/realtime")
        assert status == 401


def test_only_the_demo_files_are_reachable():
    with ControllerThread(ControllerConfig(port=0), backend=FakeBackend(), vad=FakeVad()) as c:
        for path in ("/static/", "/static/missing.js", "/static/..%2Fstatic%2Fapp.js",
                     "/static/%2E%2E%2Fstatic%2Fstyle.css", "/static/..%5Cstatic%5Capp.js", "/static/..%2Fweb.py",
                     "/static/.hidden.js", "/static/web.py", "/index.html", "/static/index.py"):
            status, _, body = fetch(c.port, path)
            assert status == 404, (path, body[:200])
        assert fetch(c.port, "/static/index.html")[0] == 200


def test_the_files_fetch_nothing_from_other_origins():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"(?:src|href)\s*=\s*[\"'](?:https?:)?//", text), path.name
        assert not re.search(r"""(?:import|importScripts|addModule|fetch)\s*\(?\s*["'`](?:https?:)?//""", text), path.name
        assert "http://" not in text and "https://" not in text, path.name
