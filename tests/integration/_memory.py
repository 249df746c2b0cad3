"""Looking for a platform key in a process, as an attacker holding its memory would.

Used by the key-isolation tests (tests/integration/test_key_isolation.py) and the fleet
test: every readable mapping of a process is read through /proc/PID/mem (root only).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from farside.attestation.platform import PLATFORM_KEY, load_platform_key

__all__ = ["found_in", "memory_of", "secrets_of"]

_MAPPING = re.compile(r"([0-9a-f]+)-([0-9a-f]+) (r)")


def secrets_of(platform_dir: Path) -> dict[str, bytes]:
    """What must not be found: the raw private key, and the PEM body (in two forms)."""
    key = load_platform_key(platform_dir / PLATFORM_KEY)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = (platform_dir / PLATFORM_KEY).read_bytes()
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    assert base64.b64decode(body)[-32:] == raw  # PKCS#8 ends with the raw key
    return {"raw private key": raw, "PEM body": body, "PKCS#8 DER": base64.b64decode(body)}


def memory_of(pid: int) -> Iterator[bytes]:
    """Every readable mapping of ``pid`` (regions the kernel refuses are skipped)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps.splitlines():
            match = _MAPPING.match(line)
            if match is None or "[vvar" in line or "[vsyscall]" in line:
                continue
            start, end = int(match[1], 16), int(match[2], 16)
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue


def found_in(pid: int, secrets: dict[str, bytes]) -> list[str]:
    """The names of the secrets present in ``pid``'s memory, argv, environment or stdin."""
    found = set()
    scanned = 0
    for region in memory_of(pid):
        scanned += len(region)
        found |= {name for name, value in secrets.items() if value in region}
    assert scanned > 10 * 2**20, "the scan read almost nothing: is this really root?"
    for place in ("cmdline", "environ"):
        data = Path(f"/proc/{pid}/{place}").read_bytes()
        found |= {f"{name} in {place}" for name, value in secrets.items() if value in data}
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"  # nothing left on stdin
    return sorted(found)
