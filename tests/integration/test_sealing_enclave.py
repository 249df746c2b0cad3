"""Sealing inside real enclaves: what one load seals, the next load of the same bundle opens.

The proxies run under in-process provision servers, each with its own platform
key (two trusted machines, A and B), over mTLS on loopback. The enclave is
tests/enclaves/sealer.py, whose ecalls call ``farside.trusted.seal``/``unseal``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import farside
from farside._devcerts import make_dev_certs
from farside.attestation import build_bundle, generate_signer_key, sign_bundle
from farside.attestation.platform import init_platform
from farside.provision.server import ProvisionServer, ProvisionServerConfig
from farside.trusted._sealing import UNSEAL_FAILED

from ._support import ENCLAVES, wait_until

SEALER = ENCLAVES / "sealer.py"
SECRET = b"rows the client must never see"


class Platform:
    """A provision server with its own platform key, and a client of it."""

    def __init__(self, root: Path, certs: Path, name: str) -> None:
        public_key = init_platform(root / name)
        # Trust exactly this machine; accept any code (each test says what it loads).
        self.policy = farside.AttestationPolicy(platform_keys=(public_key,), allow_debug=True)
        self.server = ProvisionServer(
            ProvisionServerConfig(
                port=0,
                tls=farside.TLSConfig(
                    cert=certs / "server.pem", key=certs / "server.key", client_ca=certs / "ca.pem"
                ),
                platform_dir=root / name,
            )
        )
        address = self.server.start()
        self.provision = farside.RemoteProvision(
            address,
            tls=farside.TLSConfig(
                ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key"
            ),
        )

    def load(self, path: Path = SEALER) -> farside.EnclaveClient:
        return farside.load(path, provision=self.provision, policy=self.policy)

    def close(self) -> None:
        wait_until(lambda: self.server.enclave_count() == 0, 10)
        self.provision.close()
        self.server.stop()


@pytest.fixture(scope="module")
def platforms() -> Iterator[tuple[Platform, Platform]]:
    root = Path(tempfile.mkdtemp(prefix="farside-test-sealing-"))
    made: list[Platform] = []
    try:
        make_dev_certs(root / "tls", ["127.0.0.1"])
        made.append(Platform(root, root / "tls", "a"))
        made.append(Platform(root, root / "tls", "b"))
        yield made[0], made[1]
    finally:
        for platform in made:
            platform.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sealed(platforms: tuple[Platform, Platform]) -> bytes:
    """SECRET, sealed (policy "enclave") by a first load of the sealer on platform A."""
    with platforms[0].load() as enclave:
        blob = enclave.call("seal_it", SECRET)
    assert isinstance(blob, bytes)
    assert blob.startswith(b"FSEAL\x01\x01")
    assert SECRET not in blob
    return blob


def assert_unseal_error(error: farside.EnclaveCallError) -> None:
    assert error.remote_type.endswith("UnsealError")
    assert error.message == UNSEAL_FAILED
    assert error.code is farside.StatusCode.DATA_LOSS


def test_a_second_load_of_the_same_bundle_opens_it(
    platforms: tuple[Platform, Platform], sealed: bytes
) -> None:
    with platforms[0].load() as enclave:
        assert enclave.call("unseal_it", sealed) == SECRET
        # ... and seals afresh each time (a new nonce), still for itself.
        again = enclave.call("seal_it", SECRET)
        assert again != sealed
        assert enclave.call("unseal_it", again) == SECRET


def test_another_bundle_cannot_open_it(
    platforms: tuple[Platform, Platform], sealed: bytes, tmp_path: Path
) -> None:
    # Same file name and code plus one comment line: another measurement.
    other = tmp_path / "sealer.py"
    other.write_text(SEALER.read_text() + "# another build\n")
    with platforms[0].load(other) as enclave:
        with pytest.raises(farside.EnclaveCallError) as caught:
            enclave.call("unseal_it", sealed)
        assert_unseal_error(caught.value)
        assert enclave.call("unseal_it", enclave.call("seal_it", b"its own")) == b"its own"


def test_the_same_bundle_on_another_platform_cannot_open_it(
    platforms: tuple[Platform, Platform], sealed: bytes
) -> None:
    with platforms[1].load() as enclave:
        with pytest.raises(farside.EnclaveCallError) as caught:
            enclave.call("unseal_it", sealed)
        assert_unseal_error(caught.value)


def test_bad_blobs_get_the_same_opaque_error(
    platforms: tuple[Platform, Platform], sealed: bytes
) -> None:
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with platforms[0].load() as enclave:
        for blob in (tampered, sealed[:30], b"", b"FSEAL", "not bytes", None, [1, 2]):
            with pytest.raises(farside.EnclaveCallError) as caught:
                enclave.call("unseal_it", blob)
            assert_unseal_error(caught.value)
        assert enclave.call("unseal_it", sealed) == SECRET  # the enclave is unharmed


def test_signer_policy_needs_a_signed_bundle(platforms: tuple[Platform, Platform]) -> None:
    with platforms[0].load() as enclave:
        with pytest.raises(farside.EnclaveCallError, match="must be signed") as caught:
            enclave.call("seal_it", SECRET, "signer")
        assert caught.value.remote_type == "ValueError"
        with pytest.raises(farside.EnclaveCallError) as caught:
            enclave.call("seal_it", "text")
        assert caught.value.remote_type == "TypeError"


# ------------------------------------------------------------------ policy "signer"


def _signed_build(tmp: Path, key: Path, *, product_id: int, security_version: int) -> Path:
    """The sealer built as an archive with these manifest fields, signed with ``key``."""
    archive = tmp / f"sealer-{key.stem}-p{product_id}-v{security_version}.fsb"
    build_bundle(
        SEALER, archive, name="sealer", product_id=product_id, security_version=security_version
    )
    sign_bundle(archive, key)
    return archive


def test_signer_policy_survives_an_upgrade_but_not_a_downgrade(
    platforms: tuple[Platform, Platform], tmp_path: Path
) -> None:
    key, other_key = tmp_path / "signer.key", tmp_path / "other.key"
    generate_signer_key(key)
    generate_signer_key(other_key)
    v1 = _signed_build(tmp_path, key, product_id=5, security_version=1)
    v2 = _signed_build(tmp_path, key, product_id=5, security_version=2)
    other_product = _signed_build(tmp_path, key, product_id=6, security_version=2)
    other_signer = _signed_build(tmp_path, other_key, product_id=5, security_version=2)
    platform = platforms[0]
    with platform.load(v1) as enclave:
        from_v1 = enclave.call("seal_it", SECRET, "signer")
        assert enclave.call("unseal_it", from_v1) == SECRET
    with platform.load(v2) as enclave:
        assert enclave.call("unseal_it", from_v1) == SECRET  # the upgrade keeps the data
        from_v2 = enclave.call("seal_it", SECRET, "signer")
    with platform.load(v1) as enclave:
        with pytest.raises(farside.EnclaveCallError) as caught:
            enclave.call("unseal_it", from_v2)  # no rollback to older code
        assert_unseal_error(caught.value)
    for stranger in (other_product, other_signer):
        with platform.load(stranger) as enclave:
            with pytest.raises(farside.EnclaveCallError) as caught:
                enclave.call("unseal_it", from_v1)
            assert_unseal_error(caught.value)
