"""The circle enclave: one bouncing circle, held where its client cannot see it.

One source, four enclaves: each is loaded with its own ``EnclaveConfig.user``
(where the circle starts, its speed, radius and colour), so all four have the same
measurement. The client learns only what ``update`` returns: the circle's
position, radius and colour after one tick.

``setup(width, height)`` puts the circle on a canvas of that size (again on every
``/start``: the canvas may have changed); ``update()`` moves it one tick, bouncing
off the canvas' edges, and pulses its radius. ``finalize`` says goodbye on the
client's terminal, so the server's log shows each enclave was destroyed, not
abandoned.
"""

from __future__ import annotations

import re
from typing import Any

from farside.trusted import EnclaveConfig, TrustedApplication, ecall

MIN_SIDE, MAX_SIDE = 50, 8192  # canvas sides the enclave accepts
MIN_RADIUS, MAX_RADIUS = 4, 60  # the radius pulses between these
_COLOR = re.compile(r"rgb\((\d{1,3}),(\d{1,3}),(\d{1,3})\)")
_FIELDS = ("name", "x", "y", "dx", "dy", "radius", "color")


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an int in [{low}, {high}], not {value!r}")
    return value


class CircleEnclave(TrustedApplication):
    """Owns one circle: where it is, where it goes, how big it is, its colour."""

    def initialize(self, config: EnclaveConfig) -> None:
        params = config.user
        if not isinstance(params, dict) or set(params) != set(_FIELDS):
            raise ValueError(f"EnclaveConfig.user must be a dict with exactly {_FIELDS}")
        name = params["name"]
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise ValueError("name must be a str of 1-64 characters")
        color = params["color"]
        match = _COLOR.fullmatch(color) if isinstance(color, str) else None
        if match is None or any(int(part) > 255 for part in match.groups()):
            raise ValueError(f"color must be 'rgb(R,G,B)' with R, G, B <= 255, not {color!r}")
        self._name = name
        self._color = color
        # A negative start is measured from the far edge (the canvas is not known yet).
        self._start_x = _int(params["x"], "x", -MAX_SIDE, MAX_SIDE)
        self._start_y = _int(params["y"], "y", -MAX_SIDE, MAX_SIDE)
        self._speed_x = _int(params["dx"], "dx", 1, 100)
        self._speed_y = _int(params["dy"], "dy", 1, 100)
        self._start_radius = _int(params["radius"], "radius", MIN_RADIUS, MAX_RADIUS)
        self._width = self._height = 0
        self._x = self._y = self._dx = self._dy = self._radius = self._dr = 0

    @ecall
    def setup(self, width: int, height: int) -> dict[str, Any]:
        """Place the circle on a ``width`` x ``height`` canvas; return where it is."""
        self._width = _int(width, "width", MIN_SIDE, MAX_SIDE)
        self._height = _int(height, "height", MIN_SIDE, MAX_SIDE)
        self._radius = self._start_radius
        x = self._start_x if self._start_x >= 0 else width + self._start_x
        y = self._start_y if self._start_y >= 0 else height + self._start_y
        self._x = min(max(x, self._radius), width - self._radius)
        self._y = min(max(y, self._radius), height - self._radius)
        self._dx, self._dy, self._dr = self._speed_x, self._speed_y, 1
        return self._state()

    @ecall
    def update(self) -> dict[str, Any]:
        """Move the circle one tick (bouncing off the edges) and return where it is."""
        if not self._width:
            raise RuntimeError("update() before setup(): call setup(width, height) first")
        if not MIN_RADIUS < self._radius + self._dr < MAX_RADIUS:
            self._dr = -self._dr
        self._radius += self._dr
        self._x, self._dx = _bounce(self._x + self._dx, self._dx, self._radius, self._width)
        self._y, self._dy = _bounce(self._y + self._dy, self._dy, self._radius, self._height)
        return self._state()

    def _state(self) -> dict[str, Any]:
        return {"x": self._x, "y": self._y, "radius": self._radius, "color": self._color}

    def finalize(self, final_input: Any) -> None:
        print(f"{self._name}: finalized inside the enclave")


def _bounce(position: int, step: int, radius: int, side: int) -> tuple[int, int]:
    """The position and step after one move, reflected off the edges [radius, side-radius]."""
    low, high = radius, max(radius, side - radius)
    if position < low:
        return min(2 * low - position, high), abs(step)
    if position > high:
        return max(2 * high - position, low), -abs(step)
    return position, step


def build_trusted_application() -> TrustedApplication:
    """Asylo's BuildTrustedApplication."""
    return CircleEnclave()
