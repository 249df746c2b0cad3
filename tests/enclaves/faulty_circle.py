"""The circle enclave with a fault per circle, for the bouncing circles' grey-circle tests.

circle_enclave_0 behaves; circle_enclave_1 fails to load (its initialize raises);
circle_enclave_2 never answers update() (it waits until the client gives up);
circle_enclave_3 answers update() with nonsense (a colour that is a script).
"""

import time

from farside.examples.bouncing_circles.circle_enclave import CircleEnclave
from farside.trusted import cancelled, ecall


class FaultyCircle(CircleEnclave):
    def initialize(self, config):
        super().initialize(config)
        if self._name == "circle_enclave_1":
            raise RuntimeError("circle 1 refuses to start")

    @ecall
    def update(self):
        state = super().update()
        if self._name == "circle_enclave_2":
            deadline = time.monotonic() + 30
            while not cancelled() and time.monotonic() < deadline:
                time.sleep(0.01)
        if self._name == "circle_enclave_3":
            state["color"] = "</script><script>alert(1)</script>"
        return state


def build_trusted_application():
    return FaultyCircle()
