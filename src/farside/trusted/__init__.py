"""The trusted side: what enclave code imports.

An enclave bundle defines a ``TrustedApplication`` subclass and a
``build_trusted_application()`` function returning an instance. Inside it,
``print``/``sys.stdout``/``sys.stderr`` reach the client's terminal, the file system
(``open``, ``os``, ``pathlib``, ...) and ``host.open`` are the client's files (confined
to the root it allows; the interpreter's own files stay readable), ``input()`` reads the
client's standard input if it gives it, ``os.environ`` is the ``EnclaveConfig``'s
environment, and ``host.call``/``host.notify`` reach the exit handlers the client
registered.
``seal``/``unseal`` encrypt data for this enclave (or its signer) on this
platform; every failure to unseal is the one opaque ``UnsealError``.
"""

from .._config import EnclaveConfig
from .._errors import HostCallError, UnsealError
from ._app import TrustedApplication, ecall
from ._host import Host, cancelled, host
from ._sealing import seal, unseal

__all__ = [
    "EnclaveConfig",
    "Host",
    "HostCallError",
    "TrustedApplication",
    "UnsealError",
    "cancelled",
    "ecall",
    "host",
    "seal",
    "unseal",
]
