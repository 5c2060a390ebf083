"""The web dashboard: static files shipped in ``coby/api/web/``, served by the daemon's own app.

    GET /                  index.html (the dashboard)
    GET /static/{path}     its ES modules, stylesheet, icon and vendored libraries

The page uses only the public API (REST under ``/api/v1`` and the ``/ws`` protocol, see
docs/api.md) - nothing here talks to the daemon's internals. Everything it loads is in the
package, so it works on a machine with no internet access (no CDN), and its Content-Security-Policy
says so: scripts, styles, images and connections from this origin only.

Caching: file names carry no version, so every response says ``no-cache`` - the browser keeps
the file but revalidates it with its ETag (a cheap 304), and a new coby release never runs
against a stale script. Only the suffixes the dashboard uses are served, with explicit content
types (``.mjs`` is not in every ``mimetypes`` table); anything else, or a path outside
``coby/api/web/``, is a 404.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().with_name("web")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
TEXT = "text/plain; charset=utf-8"  # LICENSE and README files of the vendored libraries

# 'unsafe-inline' for styles only: the chart library positions its elements with style attributes.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _content_type(path: Path) -> str | None:
    if path.name in ("LICENSE", "README.md"):
        return TEXT
    return CONTENT_TYPES.get(path.suffix)


async def index(request: web.Request) -> web.StreamResponse:
    """GET /: the dashboard page."""
    headers = _headers(CONTENT_TYPES[".html"])
    headers["Content-Security-Policy"] = CSP
    headers["Referrer-Policy"] = "no-referrer"  # the page URL may carry ?token=
    return web.FileResponse(WEB_DIR / "index.html", headers=headers)


async def static(request: web.Request) -> web.StreamResponse:
    """GET /static/{path}: one file of coby/api/web/ (ETag, Last-Modified, 304 and Range by FileResponse)."""
    path = (WEB_DIR / request.match_info["path"]).resolve()
    content_type = _content_type(path)
    if content_type is None or not path.is_relative_to(WEB_DIR) or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=_headers(content_type))


def add_routes(app: web.Application) -> None:
    """Register the dashboard on ``app`` (called by ``coby.http.create_app``)."""
    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", static)
