"""Moving session frames: the threaded endpoint and the gRPC stream adapters.

The adapters are thin: they only carry ``Batch`` messages of frames between the
two ``SessionCore``s; everything a frame means lives in ``farside.protocol``.
"""

from .endpoint import Endpoint, Handler, Sender

__all__ = ["Endpoint", "Handler", "Sender"]
