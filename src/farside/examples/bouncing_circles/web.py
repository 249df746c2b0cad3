"""The web application: Asylo's four routes, on aiohttp, answering in JSON.

``/`` is the parking page, ``/circles`` the page that draws, ``/start?width&height``
(re)loads the enclaves and puts the circles on a canvas of that size, ``/calc`` moves
them one tick and says where they are. ``make_app(circles)`` builds the
``aiohttp.web.Application``; when it is cleaned up (the server stops), the four
enclaves are destroyed.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from .circles import Circles

__all__ = ["CIRCLES_KEY", "MAX_SIDE", "MIN_SIDE", "make_app"]

CIRCLES_KEY = web.AppKey("circles", Circles)
MIN_SIDE, MAX_SIDE = 100, 4096  # canvas sides /start accepts
_NO_STORE = {"Cache-Control": "no-store"}


def _page(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _side(request: web.Request, key: str) -> int:
    text = request.query.get(key)
    if text is None:
        raise web.HTTPBadRequest(text=f"/start needs ?width=W&height=H (missing {key})")
    if not text.isdigit() or len(text) > 5 or not MIN_SIDE <= int(text) <= MAX_SIDE:
        raise web.HTTPBadRequest(
            text=f"{key} must be a whole number from {MIN_SIDE} to {MAX_SIDE}, not {text[:20]!r}"
        )
    return int(text)


def make_app(circles: Circles) -> web.Application:
    """The application serving ``circles``; its cleanup destroys their enclaves."""
    parking, page = _page("index.html"), _page("circles.html")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=parking, content_type="text/html")

    async def circles_page(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers=_NO_STORE)

    async def start(request: web.Request) -> web.Response:
        width, height = _side(request, "width"), _side(request, "height")
        try:
            snapshot = await circles.start(width, height)
        except RuntimeError as exc:  # stopping
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        return _json(snapshot)

    async def calc(request: web.Request) -> web.Response:
        return _json(await circles.tick())

    async def cleanup(app: web.Application) -> None:
        await circles.close()

    app = web.Application()
    app[CIRCLES_KEY] = circles
    app.router.add_get("/", index)
    app.router.add_get("/circles", circles_page)
    app.router.add_get("/start", start)
    app.router.add_get("/calc", calc)
    app.on_cleanup.append(cleanup)
    return app


def _json(value: dict[str, Any]) -> web.Response:
    return web.json_response(value, headers=_NO_STORE)
