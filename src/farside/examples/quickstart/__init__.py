"""The seed's remote-backend quickstart: an enclave that encrypts a message.

``DEMO_ENCLAVE`` is the path of the packaged enclave, wherever farside is installed::

    from farside.examples.quickstart import DEMO_ENCLAVE

    with farside.load(DEMO_ENCLAVE) as enclave:
        print(enclave.call("encrypt", "Asylo Rocks"))
"""

from pathlib import Path

__all__ = ["DEMO_ENCLAVE"]

DEMO_ENCLAVE = Path(__file__).resolve().with_name("demo_enclave.py")
"""The quickstart enclave (``demo_enclave.py``, shipped inside the package)."""
