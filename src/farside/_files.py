"""Writing files that hold keys, certificates and archives: atomically, and private.

A crash or a full disk never leaves a half-written key: ``write_private`` writes a
temporary file with the final mode, syncs it, and renames it into place. Part of the
base layer; it knows nothing of what it writes.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private"]


def write_private(
    path: Path, data: bytes, *, mode: int = 0o600, force: bool = False, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``; refuse to overwrite unless ``force``.

    ``durable`` also syncs it to disk (not needed for files that live for one process).
    """
    if path.exists() and not force:
        raise FileExistsError(f"{str(path)!r} exists; pass --force to replace it")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
