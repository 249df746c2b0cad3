"""The bouncing circles' routes, through aiohttp's test client, with real enclaves.

The four enclaves are real proxies (local provisioning); a killed proxy, an
enclave that fails to load, one that never answers and one that answers nonsense
each turn their circle grey with the error, the other circles keep moving, and
the next /start loads fresh enclaves. The browser's view is
tests/e2e/test_bouncing_circles_browser.py; the server's signals are
tests/e2e/test_bouncing_circles.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp", reason="the bouncing circles need farside[circles] (aiohttp)")

from aiohttp.test_utils import TestClient, TestServer

from farside.examples.bouncing_circles import CIRCLE_ENCLAVE, CIRCLES, GREY, Circles
from farside.examples.bouncing_circles.web import make_app

FAULTY = Path(__file__).resolve().parent.parent / "enclaves" / "faulty_circle.py"

pytestmark = pytest.mark.timeout(120)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _serve(test: Callable[[TestClient[Any, Any], Circles], Awaitable[None]], **kwargs: Any) -> None:
    """Run ``test`` against the app on a loopback port; the enclaves go with it."""

    async def main() -> None:
        circles = Circles(**kwargs)
        async with TestClient(TestServer(make_app(circles))) as client:
            await test(client, circles)
        assert all(slot.enclave is None for slot in circles.slots)

    asyncio.run(main())


async def _get(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    if response.content_type == "application/json":
        return await response.json()
    return await response.text()


def _by_name(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in snapshot["circles"]}


def test_routes_four_enclaves_one_measurement_moving() -> None:
    async def test(client: TestClient[Any, Any], circles: Circles) -> None:
        assert "/circles" in await _get(client, "/")
        page = await _get(client, "/circles")
        assert "<canvas" in page
        assert "/calc" in page
        assert "/start" in page
        assert "innerHTML" not in page  # what enclaves say is shown as text, never markup

        for bad in ("", "?width=700", "?width=x&height=500", "?width=99&height=500",
                    "?width=700&height=5000", "?width=-1&height=500"):  # fmt: skip
            await _get(client, f"/start{bad}", status=400)
        assert all(slot.enclave is None for slot in circles.slots)  # nothing loaded for them

        started = await _get(client, "/start?width=640&height=480")
        assert (started["width"], started["height"]) == (640, 480)
        assert started["same_measurement"] is True
        shown = started["circles"]
        assert [c["name"] for c in shown] == [spec.name for spec in CIRCLES]
        assert [c["fill"] for c in shown] == [spec.color for spec in CIRCLES]
        assert len({spec.color for spec in CIRCLES}) == 4
        assert all(c["alive"] and c["error"] is None for c in shown)
        # One source, four configurations: one measurement, the one pinned in the policy.
        assert {c["measurement"] for c in shown} == {started["expected_measurement"]}
        assert all(c["attestation"].startswith("verified: pinned measurement") for c in shown)
        assert len({c["proxy_pid"] for c in shown}) == 4

        first = await _get(client, "/calc")
        second = await _get(client, "/calc")
        assert second["ticks"] == first["ticks"] + 1 == 2
        for a, b in zip(first["circles"], second["circles"], strict=True):
            assert (a["x"], a["y"]) != (b["x"], b["y"]), a["name"]
            assert 0 <= b["x"] <= 640
            assert 0 <= b["y"] <= 480
        for _ in range(200):  # they bounce: always on the canvas
            for c in (await _get(client, "/calc"))["circles"]:
                assert c["radius"] <= c["x"] <= 640 - c["radius"], c
                assert c["radius"] <= c["y"] <= 480 - c["radius"], c

    _serve(test)


def test_a_killed_proxy_turns_grey_and_start_reloads_it() -> None:
    async def test(client: TestClient[Any, Any], circles: Circles) -> None:
        started = _by_name(await _get(client, "/start?width=700&height=500"))
        victim = started["circle_enclave_1"]["proxy_pid"]
        os.kill(victim, signal.SIGKILL)

        for _ in range(50):  # the session notices the closed socket at once
            shown = _by_name(await _get(client, "/calc"))
            if not shown["circle_enclave_1"]["alive"]:
                break
            await asyncio.sleep(0.05)
        grey = shown["circle_enclave_1"]
        assert grey["state"] == "dead"
        assert grey["fill"] == GREY
        assert "EnclaveUnavailableError" in grey["error"]
        before = shown
        after = _by_name(await _get(client, "/calc"))  # the server still serves
        for name in ("circle_enclave_0", "circle_enclave_2", "circle_enclave_3"):
            assert after[name]["alive"]
            assert (after[name]["x"], after[name]["y"]) != (before[name]["x"], before[name]["y"])
        assert (after["circle_enclave_1"]["x"], after["circle_enclave_1"]["y"]) == (
            grey["x"],
            grey["y"],
        )

        again = _by_name(await _get(client, "/start?width=700&height=500"))
        fresh = again["circle_enclave_1"]
        assert fresh["alive"]
        assert fresh["error"] is None
        assert fresh["loads"] == 2
        assert fresh["proxy_pid"] != victim
        assert again["circle_enclave_0"]["loads"] == 1  # the live ones were kept
        assert _by_name(await _get(client, "/calc"))["circle_enclave_1"]["alive"]

    _serve(test)


def test_faults_turn_their_circles_grey_and_the_server_keeps_serving() -> None:
    async def test(client: TestClient[Any, Any], circles: Circles) -> None:
        started = _by_name(await _get(client, "/start?width=700&height=500"))
        assert started["circle_enclave_0"]["alive"]
        failed = started["circle_enclave_1"]
        assert failed["state"] == "dead"
        assert failed["fill"] == GREY
        assert "refuses to start" in failed["error"]
        assert failed["measurement"] is None
        assert failed["proxy_pid"] is None
        assert failed["attestation"].startswith("not attested")

        shown = _by_name(await _get(client, "/calc"))
        hung, liar = shown["circle_enclave_2"], shown["circle_enclave_3"]
        assert hung["fill"] == GREY, hung
        assert hung["error"].startswith("timed out"), hung
        assert liar["fill"] == GREY, liar
        assert "is not rgb(R,G,B)" in liar["error"], liar
        assert liar["measurement"] == started["circle_enclave_0"]["measurement"]
        assert liar["attestation"].startswith("verified")  # it was attested; then it lied
        assert "<script>" not in liar["fill"]  # the enclave's nonsense is never drawn
        assert shown["circle_enclave_0"]["alive"]
        moved = _by_name(await _get(client, "/calc"))["circle_enclave_0"]
        assert moved["x"] != shown["circle_enclave_0"]["x"]

        again = _by_name(await _get(client, "/start?width=700&height=500"))
        assert [again[f"circle_enclave_{i}"]["loads"] for i in range(4)] == [1, 2, 2, 2]

    _serve(test, enclave_path=FAULTY, call_timeout=0.5)


def test_sequential_mode_moves_the_same_circles() -> None:
    async def test(client: TestClient[Any, Any], circles: Circles) -> None:
        await _get(client, "/start?width=700&height=500")
        shown = await _get(client, "/calc")
        assert shown["concurrent"] is False
        assert all(c["alive"] for c in shown["circles"])

    _serve(test, concurrent=False)


def test_the_packaged_enclave_refuses_bad_setup_and_config() -> None:
    import farside

    spec = CIRCLES[0]
    with farside.load(CIRCLE_ENCLAVE, config=spec.config()) as enclave:
        with pytest.raises(farside.EnclaveCallError, match="before setup"):
            enclave.call("update")
        with pytest.raises(farside.EnclaveCallError, match="width must be an int"):
            enclave.call("setup", True, 500)
        assert enclave.call("setup", 700, 500) == {
            "x": spec.x,
            "y": spec.y,
            "radius": spec.radius,
            "color": spec.color,
        }
    bad = farside.EnclaveConfig(user={**spec.config().user, "color": "red"})
    with pytest.raises(farside.EnclaveLoadError, match="rgb"):
        farside.load(CIRCLE_ENCLAVE, config=bad)
