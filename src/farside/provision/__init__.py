"""Provisioning: where the proxy hosting an enclave comes from.

``LocalProvision`` (the default) runs it as a child process on this machine;
anything implementing ``Provisioner`` can be used instead.
"""

from ._base import Provisioner, ProxyLease
from .local import LocalProvision

__all__ = ["LocalProvision", "Provisioner", "ProxyLease"]
