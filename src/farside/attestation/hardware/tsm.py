"""The attester of Linux confidential VMs (Intel TDX, AMD SEV-SNP): configfs-tsm reports.

The kernel's ABI (Documentation/ABI/testing/configfs-tsm-report, Linux 6.7+): make a
directory under ``/sys/kernel/config/tsm/report``; write up to 64 bytes of report
data to its ``inblob``; read the evidence from ``outblob`` (a TDX quote, or an
SEV-SNP report), the provider's extra material from ``auxblob`` (SEV-SNP: the
host's certificate table with the VCEK, when the host provides one) and which
driver made it from ``provider`` ("tdx_guest", "sev_guest"); remove the directory.
``generation`` counts the writes to the entry: if it moved by more than our own
write, someone else wrote in between and the blobs may not be ours, so the report
is refused rather than returned.

File access goes through a small ``TsmFileSystem`` seam so that tests can stand in
for the kernel (which fills ``outblob`` when ``inblob`` is written) without one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..._errors import AttestationError

__all__ = ["DEFAULT_TSM_ROOT", "TsmAttester", "TsmFileSystem", "TsmReport"]

DEFAULT_TSM_ROOT = "/sys/kernel/config/tsm/report"
_PROVIDERS = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}
_MAX_BLOB = 64 * 1024  # the kernel caps outblob at 32 KiB


class TsmFileSystem(Protocol):
    """The four file operations the configfs-tsm ABI needs."""

    def mkdir(self, path: Path) -> None:
        """Create the report entry ``path``."""

    def rmdir(self, path: Path) -> None:
        """Remove the report entry ``path``."""

    def read(self, path: Path) -> bytes:
        """Read the whole attribute ``path``; ``FileNotFoundError`` if the provider lacks it."""

    def write(self, path: Path, data: bytes) -> None:
        """Write ``data`` to the attribute ``path`` in one write."""


class _OsFileSystem:
    """configfs itself: attributes are read and written whole, with one system call each."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as attribute:
            return attribute.read(_MAX_BLOB + 1)

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as attribute:
            if attribute.write(data) != len(data):
                raise OSError(f"short write to {path}")


@dataclass(frozen=True, slots=True)
class TsmReport:
    """What one configfs-tsm report entry produced."""

    provider: str
    outblob: bytes
    auxblob: bytes
    generation: int


def _failure(message: str) -> AttestationError:
    return AttestationError(f"configfs-tsm: {message}", check="attester")


class TsmAttester:
    """Evidence from the kernel's configfs-tsm interface: a TDX quote or an SEV-SNP report.

    ``evidence(report_data)`` returns the raw ``outblob``; ``report(report_data)``
    also returns the provider and ``auxblob`` (pass an SEV-SNP ``auxblob`` as
    collateral to the verifier). Failures raise ``AttestationError(check="attester")``.
    """

    def __init__(
        self, root: str | os.PathLike[str] = DEFAULT_TSM_ROOT, *, fs: TsmFileSystem | None = None
    ) -> None:
        self._root = Path(root)
        self._fs: TsmFileSystem = _OsFileSystem() if fs is None else fs
        self._format: str | None = None

    @property
    def format(self) -> str:
        """ "tdx" or "sev-snp": the evidence format of this machine's TSM provider."""
        if self._format is None:
            entry = self._make_entry()
            try:
                self._format = self._provider_format(entry)
            finally:
                self._remove_entry(entry)
        return self._format

    def _make_entry(self) -> Path:
        # A name of our own: concurrent attesters (other processes) must not share an entry.
        entry = self._root / f"farside-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._fs.mkdir(entry)
        except OSError as exc:
            raise _failure(f"cannot create a report entry under {self._root}: {exc}") from exc
        return entry

    def _remove_entry(self, entry: Path) -> None:
        # The entry holds no secret; failing to remove it must not hide the real outcome.
        with contextlib.suppress(OSError):
            self._fs.rmdir(entry)

    def _provider_format(self, entry: Path) -> str:
        provider = self._fs.read(entry / "provider").decode("ascii", "replace").strip()
        if provider not in _PROVIDERS:
            raise _failure(f"unknown provider {provider!r} (expected tdx_guest or sev_guest)")
        return _PROVIDERS[provider]

    def _generation(self, entry: Path) -> int:
        text = self._fs.read(entry / "generation").decode("ascii", "replace").strip()
        if not text.isdigit():
            raise _failure(f"generation is not a number: {text[:20]!r}")
        return int(text)

    def report(self, report_data: bytes) -> TsmReport:
        """Ask the TSM for a report over ``report_data`` (exactly 64 bytes)."""
        if not isinstance(report_data, bytes) or len(report_data) != 64:
            raise ValueError("report_data is 64 bytes")
        entry = self._make_entry()
        try:
            before = self._generation(entry)
            self._fs.write(entry / "inblob", report_data)
            format_ = self._provider_format(entry)
            outblob = self._fs.read(entry / "outblob")
            try:
                auxblob = self._fs.read(entry / "auxblob")
            except FileNotFoundError:
                auxblob = b""  # the provider has none (TDX)
            after = self._generation(entry)
        except OSError as exc:
            raise _failure(f"reading the report failed: {exc}") from exc
        finally:
            self._remove_entry(entry)
        if after != before + 1:
            raise _failure(
                f"the report entry was written by someone else meanwhile (generation "
                f"{before} -> {after}); its blobs may not be for this report data"
            )
        if not outblob or len(outblob) > _MAX_BLOB:
            raise _failure("the provider returned no report")
        self._format = format_
        provider = next(name for name, value in _PROVIDERS.items() if value == format_)
        return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob, generation=after)

    def evidence(self, report_data: bytes) -> bytes:
        """The raw evidence (``outblob``) binding ``report_data`` (64 bytes)."""
        return self.report(report_data).outblob
