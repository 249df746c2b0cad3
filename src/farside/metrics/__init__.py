"""Metrics: what farside counts, and how Prometheus reads it.

An application opts in with ``farside.metrics.enable()`` (``client``): its attestation
failures and session bytes are then counted and registered with Prometheus. The trusted
machine's daemons serve their own ``/metrics`` when given ``--metrics-address``
(``exporter``); proxies count calls in plain Python (``counters``), report them to
their provisioner on a bounded line grammar (``report``), and the provision server
keeps monotonic totals of what they reported (``aggregate``). docs/operations.md lists
every family.

Importing this package loads neither ``prometheus_client`` nor anything of farside
above the base layer; names are loaded on first use.
"""

import typing as _typing

from .._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from .client import (
        disable as disable,
        enable as enable,
    )

_EXPORTS = {
    "enable": ".client",
    "disable": ".client",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
