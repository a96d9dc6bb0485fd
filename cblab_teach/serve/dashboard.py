"""``GET /dashboard``: one page that shows the engine serving, redrawn twice a second while load runs.

Each step's budget split into decode and prefill tokens (the course's budget bar, over real HTTP traffic), the
running and waiting counts, the KV pool in use, and the last requests' TTFT and TPOT. The page works offline: its
only script is plotly.js, served from the plotly package this course already installs.
"""

from __future__ import annotations

from pathlib import Path

import plotly
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from .live import LiveView

PAGE = Path(__file__).with_name("dashboard.html")
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def add_dashboard(app: FastAPI, live: LiveView, model_name: str, batching: str = "continuous") -> None:
    """The page, its script, and ``/dashboard/state``: the model, how it batches (``continuous`` or ``static``),
    and the live view's last steps and requests."""

    @app.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/dashboard/plotly.min.js")
    async def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    @app.get("/dashboard/state")
    async def state() -> JSONResponse:
        return JSONResponse({"model": model_name, "batching": batching, **live.snapshot()})
