"""`/docs` (Swagger UI) and `/redoc` (ReDoc), served from this controller with no CDN.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so at a site without internet they are
blank. The assets here come from the `fastapi-offline` package, which bundles them; they are
served by fixed name (no path taken from the URL), open to anyone as the pages were.
"""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse, Response

from fleet.auth.permissions import Allow

router = APIRouter(include_in_schema=False)

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs/assets"
# The only files served, with their types: nothing else from that directory, whatever is asked.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
# A week: the files change only with the installed package.
CACHE = {"Cache-Control": "public, max-age=604800"}


@router.get("/docs", dependencies=[Allow("public")])
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    app = request.app
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


@router.get("/docs/oauth2-redirect", dependencies=[Allow("public")])
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", dependencies=[Allow("public")])
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )


# ReDoc's sidebar shows its maker's logo from their CDN: a request that a site without internet
# cannot make (and one that tells a third party the docs were opened). Ours, from here, instead.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def _redoc_script() -> bytes:
    script = (ASSETS_DIR / "redoc.standalone.js").read_bytes()
    return script.replace(REDOC_LOGO.encode(), f"{ASSETS_URL}/favicon.png".encode())


@router.get(ASSETS_URL + "/{asset}", dependencies=[Allow("public")])
def docs_asset(asset: str) -> Response:
    name = asset
    if name not in ASSETS:
        raise HTTPException(404, f"no docs asset {name!r}: /docs and /redoc name theirs")
    if name == "redoc.standalone.js":
        return Response(_redoc_script(), media_type=ASSETS[name], headers=CACHE)
    return FileResponse(ASSETS_DIR / name, media_type=ASSETS[name], headers=CACHE)
