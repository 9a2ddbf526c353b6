"""The web dashboard: a single page of plain HTML, CSS and ES modules served by the API server.

Owns the routes `/` (the page) and `/dashboard/static/...` (its assets, shipped inside the package
so nothing is fetched from a CDN). It owns no data and no API: every screen is built in the browser
from the public `/v1` API with the user's own API key, so the dashboard can do exactly what the
key can do and nothing more.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tunegate.jobs.lifecycle import EVENT_TYPES, TERMINAL, UNFINISHED

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/dashboard/static"

# The page may talk to this server only: no CDN, no third-party fonts, no inline script. This
# makes "works offline" a property the browser enforces rather than a promise.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is tiny and changes with every release; a stale cached page with new assets would break.
    "Cache-Control": "no-cache",
}


class _StaticFiles(StaticFiles):
    """Static assets revalidated on every load, so an upgraded server never mixes old and new modules."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at `/` and its assets under `/dashboard/static/`."""

    @app.get("/", include_in_schema=False)
    def dashboard_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_redirect() -> RedirectResponse:
        return RedirectResponse("/")

    @app.get(f"{STATIC_URL}/js/lifecycle.js", include_in_schema=False)
    def lifecycle_module() -> Response:
        """The job statuses and event types as an ES module, written from jobs/lifecycle.py so the
        pages never keep their own copy."""
        return Response(
            lifecycle_js(),
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    app.mount(STATIC_URL, _StaticFiles(directory=STATIC_DIR), name="dashboard-static")


def lifecycle_js() -> str:
    def ordered(names: frozenset[str] | tuple[str, ...]) -> str:
        return json.dumps(sorted(names))

    return (
        "// Written by the server from tunegate/jobs/lifecycle.py; do not edit.\n"
        f"export const UNFINISHED = new Set({ordered(UNFINISHED)});\n"
        f"export const TERMINAL = new Set({ordered(TERMINAL)});\n"
        f"export const EVENT_TYPES = new Set({ordered(EVENT_TYPES)});\n"
    )
