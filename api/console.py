"""The operator console: `/ui` serves a page of plain HTML, CSS and JavaScript modules
(`api/console/`) that reads and writes through this same API with the viewer's token.

The page and its files hold no data and need no token; everything they show comes from the
API's resources and from `/v1/events` with `Authorization: Bearer`, as any client's would, so a
reader token sees the console read-only and the API enforces it. `GET /v1/whoami` tells the
page which role its token has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from api.auth import Role, require

CONSOLE_DIR = Path(__file__).parent / "console"
# Everything the page loads comes from this origin; it may be framed by nobody.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"content-security-policy": _CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def install_console(app: FastAPI) -> None:
    app.include_router(_router())
    app.mount("/ui/static", StaticFiles(directory=CONSOLE_DIR / "static"), name="console-static")


def _router() -> APIRouter:
    r = APIRouter()

    @r.get("/ui", include_in_schema=False)
    async def ui_redirect() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    @r.get("/ui/", include_in_schema=False)
    async def ui() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", headers={**_HEADERS, "cache-control": "no-cache"})

    @r.get("/v1/whoami", tags=["auth"], summary="The role of the request's token (and whether tokens are off)")
    async def whoami(request: Request, role: Annotated[Role, Depends(require(Role.READER))]) -> JSONResponse:
        return JSONResponse({"role": str(role), "dev_mode": not request.app.state.tokens.enabled})

    return r
