"""A file's stat as it crosses the wire: 100 bytes, the same on every system.

Shared by the client's file service, which packs what its ``os.stat`` says, and the
enclave's file system, which unpacks it into an ``os.stat_result``. Packed, a
directory listing of a thousand entries is a few thousand objects for the value
codec rather than fifteen thousand. Part of the base layer; it knows nothing else.
"""

from __future__ import annotations

import os
import struct

__all__ = ["SIZE", "pack", "unpack"]

_FORMAT = struct.Struct("<IQQQQQQqqqQQQ")
"""mode, ino, dev, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, blksize,
blocks, rdev: little-endian, times signed, the rest unsigned."""
SIZE = _FORMAT.size


def pack(st: os.stat_result) -> bytes:
    """``st`` in its wire form."""
    return _FORMAT.pack(
        st.st_mode,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
        getattr(st, "st_blksize", 0),
        getattr(st, "st_blocks", 0),
        getattr(st, "st_rdev", 0),
    )


def unpack(data: bytes) -> tuple[int, ...]:
    """The fields ``pack`` packed; ``ValueError`` unless ``data`` is exactly that long."""
    if len(data) != SIZE:
        raise ValueError(f"a packed stat is {SIZE} bytes, not {len(data)}")
    return _FORMAT.unpack(data)
