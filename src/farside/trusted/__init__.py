"""The trusted side: what enclave code imports.

An enclave bundle defines a ``TrustedApplication`` subclass and a
``build_trusted_application()`` function returning an instance. Inside it,
``print``/``sys.stdout``/``sys.stderr`` reach the client's terminal, ``open()`` and
``host.open`` reach the client's files (confined to the root it allows), and
``host.call``/``host.notify`` reach the exit handlers the client registered.
"""

from .._config import EnclaveConfig
from .._errors import HostCallError
from ._app import TrustedApplication, ecall
from ._host import Host, host

__all__ = ["EnclaveConfig", "Host", "HostCallError", "TrustedApplication", "ecall", "host"]
