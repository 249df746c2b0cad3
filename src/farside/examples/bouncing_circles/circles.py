"""The four circles: their enclaves, and what the web pages are told about them.

``Circles`` owns four ``Slot``s, one enclave each, all loaded from the one
``circle_enclave.py`` with their own ``EnclaveConfig.user``. Nothing an enclave
does can end the server: a load or call that fails, times out or returns nonsense
turns that slot grey with its error, the enclave is destroyed in the background,
and the next ``start`` loads a fresh one.

Each slot has one long-lived task that makes all of its enclave's calls, so each
enclave keeps one worker for the server's life (``farside.aio`` gives each calling
task its own worker); ``tick`` hands the four tasks one request each and waits for
all of them together (``asyncio.gather``), or one after another when
``concurrent=False`` (how Asylo's original does it, kept for the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import farside
import farside.aio
from farside.attestation import load_bundle

__all__ = [
    "CIRCLES",
    "CIRCLE_ENCLAVE",
    "GREY",
    "CircleSpec",
    "Circles",
    "Slot",
]

log = logging.getLogger("farside.examples.bouncing_circles")

CIRCLE_ENCLAVE = Path(__file__).resolve().with_name("circle_enclave.py")
"""The one enclave source all four circles are loaded from."""

GREY = "rgb(150,150,150)"
"""The colour of a circle whose enclave is dead, timed out or not loaded."""

_COLOR = re.compile(r"rgb\((\d{1,3}),(\d{1,3}),(\d{1,3})\)")
_MAX_ERROR = 300  # characters of an error shown on the page


@dataclass(frozen=True)
class CircleSpec:
    """One circle's private parameters, handed to its enclave in ``EnclaveConfig.user``.

    A negative ``x`` or ``y`` counts from the canvas' right or bottom edge.
    """

    name: str
    x: int
    y: int
    dx: int
    dy: int
    radius: int
    color: str

    def config(self) -> farside.EnclaveConfig:
        return farside.EnclaveConfig(
            user={
                "name": self.name,
                "x": self.x,
                "y": self.y,
                "dx": self.dx,
                "dy": self.dy,
                "radius": self.radius,
                "color": self.color,
            }
        )


CIRCLES = (
    CircleSpec("circle_enclave_0", 100, 200, 5, 3, 12, "rgb(66,133,244)"),  # blue
    CircleSpec("circle_enclave_1", -200, -100, 5, 5, 20, "rgb(234,67,53)"),  # red
    CircleSpec("circle_enclave_2", -100, 200, 3, 5, 30, "rgb(250,187,5)"),  # yellow
    CircleSpec("circle_enclave_3", 200, -100, 3, 3, 25, "rgb(52,168,82)"),  # green
)
"""The four circles: one enclave source, four configurations."""


class _Recorder:
    """A provisioner that remembers the lease it gave: where the slot's proxy is."""

    def __init__(self, provisioner: farside.Provisioner) -> None:
        self._provisioner = provisioner
        self.lease: Any = None

    def provision(self, *, name: str, timeout: float) -> Any:
        self.lease = self._provisioner.provision(name=name, timeout=timeout)
        return self.lease

    def release(self, lease: Any) -> None:
        self._provisioner.release(lease)

    def where(self) -> tuple[str, int | None]:
        """A line saying where the proxy runs, and its pid when it is a local child."""
        if self.lease is None:
            return "", None
        process = getattr(getattr(self.lease, "handle", None), "process", None)
        pid = getattr(process, "pid", None)
        if isinstance(pid, int):
            return f"local proxy, pid {pid}", pid
        return f"proxy at {self.lease.address}", None


def _short(text: str) -> str:
    lines = text.strip().splitlines()  # the first line: a remote traceback stays in the log
    text = " ".join(lines[0].split()) if lines else ""
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


def describe_error(exc: BaseException) -> str:
    """One line for the page: what went wrong with an enclave."""
    if isinstance(exc, farside.DeadlineExceededError | TimeoutError):
        return _short(f"timed out: {exc}" if str(exc) else "timed out")
    if isinstance(exc, farside.EnclaveError):
        return _short(f"{type(exc).__name__}: {exc.message}")
    return _short(f"{type(exc).__name__}: {exc}")


def _position(value: Any, width: int, height: int) -> dict[str, Any]:
    """The enclave's answer, checked: it is the enclave's word, not the server's."""
    if not isinstance(value, dict) or set(value) != {"x", "y", "radius", "color"}:
        raise TypeError(f"the enclave answered {type(value).__name__}, not a circle")
    limits = {"x": width, "y": height, "radius": 1000}
    for key, high in limits.items():
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= high:
            raise ValueError(f"the enclave's {key} {number!r} is not in [0, {high}]")
    color = value["color"]
    match = _COLOR.fullmatch(color) if isinstance(color, str) else None
    if match is None or any(int(part) > 255 for part in match.groups()):
        raise ValueError(f"the enclave's colour {str(color)[:40]!r} is not rgb(R,G,B)")
    return {key: value[key] for key in ("x", "y", "radius", "color")}


class Slot:
    """One circle's enclave: its state, its last position, and the task that calls it."""

    def __init__(self, spec: CircleSpec, circles: Circles) -> None:
        self.spec = spec
        self._circles = circles
        self.enclave: farside.aio.AsyncEnclaveClient | None = None
        self.state = "not loaded"  # "loading", "alive", "dead"
        self.error: str | None = None
        self.attestation = "not loaded yet"
        self.proxy = ""
        self.proxy_pid: int | None = None
        self.measurement: str | None = None  # kept after the enclave fails, until a reload
        self.loads = 0
        self.position: dict[str, Any] = {
            "x": max(spec.x, spec.radius),
            "y": max(spec.y, spec.radius),
            "radius": spec.radius,
            "color": spec.color,
        }
        self._requests: asyncio.Queue[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = (
            asyncio.Queue()
        )
        self._runner: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.state == "alive"

    def status(self) -> dict[str, Any]:
        """What the page shows about this circle."""
        return {
            "name": self.spec.name,
            "color": self.spec.color,
            "fill": self.position["color"] if self.alive else GREY,
            "x": self.position["x"],
            "y": self.position["y"],
            "radius": self.position["radius"],
            "alive": self.alive,
            "state": self.state,
            "error": self.error,
            "measurement": self.measurement,
            "attestation": self.attestation,
            "proxy": self.proxy,
            "proxy_pid": self.proxy_pid,
            "loads": self.loads,
        }

    # -------------------------------------------------------------- the enclave's life

    async def load(self) -> None:
        """Load a fresh enclave for this circle; on failure the slot is dead, saying why."""
        circles = self._circles
        recorder = _Recorder(circles.provision)
        self.state, self.error = "loading", None
        self.attestation = "attesting…"
        self.proxy, self.proxy_pid, self.measurement = "", None, None
        self.loads += 1
        try:
            enclave = await farside.aio.load(
                circles.enclave_path,
                name=f"{self.spec.name}-{self.loads}",
                provision=recorder,
                policy=circles.policy,
                config=self.spec.config(),
                load_timeout=circles.load_timeout,
            )
        except Exception as exc:
            if isinstance(exc, farside.AttestationError):
                self.attestation = describe_error(exc)
            else:
                self.attestation = "not attested: the load failed"
            self._fail(exc)
            return
        self.enclave, self.measurement = enclave, enclave.measurement
        self.proxy, self.proxy_pid = recorder.where()
        self.attestation = circles.attestation_line(enclave)
        self.state = "alive"
        self._runner = asyncio.create_task(self._serve(enclave), name=f"{self.spec.name}-calls")

    def place(self, width: int, height: int) -> None:
        """Put a circle that has no enclave where its enclave would have started it."""
        spec, radius = self.spec, self.position["radius"]
        x = spec.x if spec.x >= 0 else width + spec.x
        y = spec.y if spec.y >= 0 else height + spec.y
        self.position["x"] = min(max(x, radius), max(radius, width - radius))
        self.position["y"] = min(max(y, radius), max(radius, height - radius))

    async def setup(self, width: int, height: int) -> None:
        if self.alive:
            await self._request("setup", width, height)

    async def update(self) -> None:
        if self.alive:
            await self._request("update")

    async def _request(self, entry: str, *args: Any) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests.put_nowait((entry, args, future))
        try:
            value = await future
            self.position = _position(value, self._circles.width, self._circles.height)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    async def _serve(self, enclave: farside.aio.AsyncEnclaveClient) -> None:
        """Make every call of this enclave, from this one task (one enclave worker)."""
        timeout = self._circles.call_timeout
        while True:
            entry, args, future = await self._requests.get()
            if future.done():  # the request's waiter went away
                continue
            try:
                value = await enclave.call(entry, *args, timeout=timeout)
            except asyncio.CancelledError:  # the enclave is being let go: answer, then stop
                if not future.done():
                    future.set_exception(
                        farside.EnclaveUnavailableError("the enclave is being destroyed")
                    )
                raise
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        """Grey: record why, let the enclave go in the background."""
        if self.state == "dead":
            return
        self.state = "dead"
        self.error = describe_error(exc)
        log.warning("%s: %s", self.spec.name, self.error)
        self._circles.discard(self._detach())

    def _detach(self) -> tuple[farside.aio.AsyncEnclaveClient | None, asyncio.Task[None] | None]:
        enclave, runner = self.enclave, self._runner
        self.enclave, self._runner = None, None
        while not self._requests.empty():
            _, _, future = self._requests.get_nowait()
            if not future.done():
                future.set_exception(farside.EnclaveUnavailableError("the enclave was let go"))
        return enclave, runner

    async def close(self) -> None:
        """Destroy the enclave (finalize, close, reap its proxy)."""
        await self._circles.destroy(*self._detach(), name=self.spec.name)
        if self.state != "dead":
            self.state = "not loaded"


class Circles:
    """The four circles and their enclaves, as the web application drives them."""

    def __init__(
        self,
        *,
        provision: farside.Provisioner | None = None,
        platform_keys: Sequence[str] = (),
        enclave_path: str | Path = CIRCLE_ENCLAVE,
        specs: Sequence[CircleSpec] = CIRCLES,
        call_timeout: float = 2.0,
        load_timeout: float = 30.0,
        concurrent: bool = True,
        destroy_timeout: float = 10.0,
    ) -> None:
        self.enclave_path = Path(enclave_path)
        self.provision = provision if provision is not None else farside.LocalProvision()
        self.call_timeout = call_timeout
        self.load_timeout = load_timeout
        self.concurrent = concurrent
        self.destroy_timeout = destroy_timeout
        self.platform_keys = tuple(platform_keys)
        # Every circle must be exactly this code: one measurement for all four.
        self.expected_measurement = load_bundle(self.enclave_path).measurement().hex()
        self.policy = farside.AttestationPolicy(
            measurements=(self.expected_measurement,),
            allow_debug=True,
            platform_keys=self.platform_keys,
        )
        self.slots = [Slot(spec, self) for spec in specs]
        self.width, self.height = 700, 500
        self.ticks = 0
        self.started: float | None = None
        self._start_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    def attestation_line(self, enclave: farside.aio.AsyncEnclaveClient) -> str:
        """What the page says of an enclave's attestation (it passed: it is loaded)."""
        identity = enclave.identity
        platform = "a --platform-key platform" if self.platform_keys else "the local platform"
        kind = "debug" if identity.debug else "production"
        return f"verified: pinned measurement, {kind} enclave, evidence signed by {platform}"

    # -------------------------------------------------------------- routes' work

    async def start(self, width: int, height: int) -> dict[str, Any]:
        """(Re)load every circle that is not alive, then set all of them up on the canvas."""
        if self._closed:
            raise RuntimeError("the server is stopping")
        async with self._start_lock:
            self.width, self.height = width, height
            await asyncio.gather(*(slot.load() for slot in self.slots if not slot.alive))
            await asyncio.gather(*(slot.setup(width, height) for slot in self.slots))
            for slot in self.slots:
                if not slot.alive:
                    slot.place(width, height)  # a grey circle where it would have started
            self.ticks = 0
            self.started = time.monotonic()
            return self.snapshot()

    async def tick(self) -> dict[str, Any]:
        """Move every live circle one step (all four at once) and say where they are."""
        if self.concurrent:
            await asyncio.gather(*(slot.update() for slot in self.slots))
        else:
            for slot in self.slots:
                await slot.update()
        self.ticks += 1
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        circles = [slot.status() for slot in self.slots]
        measurements = {c["measurement"] for c in circles if c["measurement"]}
        return {
            "width": self.width,
            "height": self.height,
            "ticks": self.ticks,
            "concurrent": self.concurrent,
            "expected_measurement": self.expected_measurement,
            "same_measurement": measurements <= {self.expected_measurement},
            "circles": circles,
        }

    # -------------------------------------------------------------- ending

    def discard(
        self, parts: tuple[farside.aio.AsyncEnclaveClient | None, asyncio.Task[None] | None]
    ) -> None:
        """Destroy a failed enclave in the background (``close`` waits for it)."""
        task = asyncio.create_task(self.destroy(*parts, name="a failed enclave"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def destroy(
        self,
        enclave: farside.aio.AsyncEnclaveClient | None,
        runner: asyncio.Task[None] | None,
        *,
        name: str,
    ) -> None:
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if enclave is None or enclave.closed:
            return
        try:
            async with asyncio.timeout(self.destroy_timeout):
                await enclave.aclose()
        except Exception as exc:  # a dead proxy's finalize, or one that hangs
            log.warning("%s: destroying its enclave: %s", name, describe_error(exc))

    async def close(self) -> None:
        """Destroy all four enclaves: no proxy is left once this returns."""
        self._closed = True
        async with self._start_lock:
            live = [slot for slot in self.slots if slot.enclave is not None]
            await asyncio.gather(*(slot.close() for slot in self.slots))
            while self._background:
                await asyncio.gather(*list(self._background), return_exceptions=True)
        if live:
            names = ", ".join(slot.spec.name for slot in live)
            print(f"bouncing circles: destroyed {len(live)} enclaves ({names})", file=sys.stderr)
