"""Process plumbing shared by the proxy and the platform agent (base layer, Linux first)."""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["set_parent_death_signal"]

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send ``sig`` when our parent dies (best effort; elsewhere a no-op).

    Linux ties it to the parent *thread* that forked us: provisioners fork from one
    long-lived thread for that reason.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
