"""Provisioning: where the proxy hosting an enclave comes from.

``LocalProvision`` (the default) runs it as a child process on this machine;
``RemoteProvision`` asks a provision server on a trusted machine (``farside
provision-server``, in ``provision.server``) to start it there. Anything
implementing ``Provisioner`` can be used instead.
"""

from ._base import Provisioner, ProxyLease
from .local import LocalProvision
from .remote import RemoteProvision

__all__ = ["LocalProvision", "Provisioner", "ProxyLease", "RemoteProvision"]
