"""The web dashboard: static HTML, JavaScript and CSS that talk to the public `/v1` API like any client.

Nothing is built at run time and nothing is fetched from elsewhere: the files here are served as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# The page loads only its own files and talks only to its own server.
POLICY = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


class _DashboardFiles(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        # Revalidated on every load (a 304 while unchanged), so an upgraded server never runs yesterday's script.
        response.headers["cache-control"] = "no-cache"
        response.headers["content-security-policy"] = POLICY
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at `/dashboard/`; `/dashboard` redirects there, so relative URLs resolve."""

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> RedirectResponse:
        # Relative, so it also works behind a proxy that serves ftserve under a path prefix.
        return RedirectResponse("dashboard/", status_code=307)

    app.mount("/dashboard", _DashboardFiles(directory=STATIC, html=True), name="dashboard")
