"""The browser demo: a static page at ``/`` that talks to ``/v1/realtime`` from the browser.

Everything it needs is in ``controller/static/`` (no build step, nothing fetched from elsewhere). The page
itself holds no secret, so it is served without auth; its WebSocket authenticates like any client (the
browser form: an ``openai-insecure-api-key.<key>`` subprotocol next to ``realtime``).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Only the page's own origin: scripts, styles, the worklet and the WebSocket back to this server.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
           "Referrer-Policy": "no-referrer"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def _file_response(path: Path) -> web.Response:
    return web.Response(body=path.read_bytes(), headers={**HEADERS, "Content-Type": CONTENT_TYPES[path.suffix]})


async def _index(request: web.Request) -> web.Response:
    return _file_response(STATIC_DIR / "index.html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = STATIC_DIR / name
    # a flat folder: no sub-paths, no dot files, only the types above
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix not in CONTENT_TYPES \
            or path.resolve().parent != STATIC_DIR or not path.is_file():
        raise web.HTTPNotFound()
    return _file_response(path)


def add_routes(app: web.Application) -> None:
    """``GET /`` (the page) and ``GET /static/<file>`` (its scripts and styles)."""
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
