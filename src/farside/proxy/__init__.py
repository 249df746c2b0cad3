"""The proxy process (Asylo's RemoteEnclaveProxyServer): one enclave, one session."""

from .server import RemoteEnclaveProxyServer, run_proxy

__all__ = ["RemoteEnclaveProxyServer", "run_proxy"]
