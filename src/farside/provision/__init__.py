"""Provisioning: where the proxy hosting an enclave comes from.

``LocalProvision`` (the default) runs it as a child process on this machine;
``RemoteProvision`` asks a provision server on a trusted machine (``farside
provision-server``, in ``farside.provision.server``) to start it there. Anything
implementing ``Provisioner`` (``farside.provision.base``) can be used instead. The
server side: ``server`` drives a ``backend`` (``single_host``, or ``fleet``'s Ray
placer).

Names are loaded on first use.
"""

import typing as _typing

from .._lazy import exports as _exports

if _typing.TYPE_CHECKING:
    from .base import (
        Provisioner as Provisioner,
        ProxyLease as ProxyLease,
    )
    from .local import (
        LocalProvision as LocalProvision,
    )
    from .remote import (
        RemoteProvision as RemoteProvision,
    )

_EXPORTS = {
    "LocalProvision": ".local",
    "Provisioner": ".base",
    "ProxyLease": ".base",
    "RemoteProvision": ".remote",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _exports(__name__, _EXPORTS)
