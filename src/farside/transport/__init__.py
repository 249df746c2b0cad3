"""Moving session frames: the endpoint that drives a session core, and the transports.

* ``Endpoint`` drives a ``farside.protocol.SessionCore`` from many threads (both ends).
* ``base`` is the seam every transport implements: ``ClientTransport``, ``Listener``,
  ``FrameSender`` (with backpressure), ``Admission`` and ``refusal_error``.
* ``connect``/``listen`` choose a transport by name (``factory``): ``"grpc"``,
  ``"stream"`` or ``"vsock"`` (``ALL_TRANSPORTS``; provisioners use ``TRANSPORTS``, the
  first two); each lives in its own module and is imported only when used.
* ``relay.VsockRelay`` is a Nitro Enclave parent's relay (``farside vsock-relay``).

Names are loaded on first use: the stream transport never loads gRPC.
"""

import typing as _typing

from .._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from .base import (
        Admission as Admission,
        ClientTransport as ClientTransport,
        FrameSender as FrameSender,
        Listener as Listener,
        Refusal as Refusal,
    )
    from .endpoint import (
        Endpoint as Endpoint,
        Handler as Handler,
    )
    from .factory import (
        ALL_TRANSPORTS as ALL_TRANSPORTS,
        TRANSPORTS as TRANSPORTS,
        choose_transport as choose_transport,
        connect as connect,
        listen as listen,
    )

_EXPORTS = {
    "Endpoint": ".endpoint",
    "Handler": ".endpoint",
    "Admission": ".base",
    "ClientTransport": ".base",
    "FrameSender": ".base",
    "Listener": ".base",
    "Refusal": ".base",
    "ALL_TRANSPORTS": ".factory",
    "TRANSPORTS": ".factory",
    "choose_transport": ".factory",
    "connect": ".factory",
    "listen": ".factory",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
