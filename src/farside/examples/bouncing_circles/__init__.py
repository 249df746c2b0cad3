"""Asylo's bouncing circles, on farside: four enclaves behind a web page.

    python -m farside.examples.bouncing_circles [--port 8888] [--remote HOST:PORT ...]

One enclave source (``circle_enclave.py``) is loaded four times with four
configurations; each enclave privately holds one circle. The web application
(``web.py``, aiohttp) asks all four for their next position at once on every
``/calc``, and shows a circle whose enclave died or timed out in grey, with its
error, until the next ``/start`` loads it again. See README.md beside this file.
"""

from .circles import CIRCLE_ENCLAVE, CIRCLES, GREY, Circles, CircleSpec

__all__ = ["CIRCLES", "CIRCLE_ENCLAVE", "GREY", "CircleSpec", "Circles"]
