"""Load cost and resource hygiene of remote provisioning over TLS on loopback.

    python -m benchmarks.remote_load [--cycles 50]

Starts a provision server in this process (mTLS, development certificates in a
temporary directory), then runs load -> first call -> destroy ``--cycles``
times. Prints the median and p90 time from ``load`` to the first call's result,
and this process's open file descriptors and child processes before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import farside
from farside._devcerts import make_dev_certs
from farside.attestation.platform import init_platform
from farside.provision.server import ProvisionServer, ProvisionServerConfig

DEMO = Path(farside.__file__).parent / "examples" / "quickstart" / "demo_enclave.py"


def _children() -> int:
    me = str(os.getpid())
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        count += 1
            except OSError:
                pass
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "tls"
        make_dev_certs(certs, ["127.0.0.1"])
        init_platform(Path(tmp) / "platform")
        server = ProvisionServer(
            ProvisionServerConfig(
                port=0,
                tls=farside.TLSConfig(
                    cert=certs / "server.pem", key=certs / "server.key", client_ca=certs / "ca.pem"
                ),
                platform_dir=Path(tmp) / "platform",
            )
        )
        address = server.start()
        tls = farside.TLSConfig(
            ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key"
        )
        provision = farside.RemoteProvision(address, tls=tls)
        policy = farside.AttestationPolicy(
            platform_keys=(Path(tmp) / "platform" / "platform.pub",), allow_debug=True
        )
        # One warm-up cycle: the first load pays for imports and the TLS session setup.
        with farside.load(DEMO, provision=provision, policy=policy) as enclave:
            enclave.call("encrypt", "warm-up")
        time.sleep(0.5)
        fds_before, children_before = len(os.listdir("/proc/self/fd")), _children()
        samples = []
        quiet = contextlib.redirect_stdout(io.StringIO())  # the enclave prints its ciphertext
        quiet.__enter__()
        for _ in range(args.cycles):
            start = time.perf_counter()
            enclave = farside.load(DEMO, provision=provision, policy=policy)
            enclave.call("encrypt", "Asylo Rocks")
            samples.append(time.perf_counter() - start)
            farside.EnclaveManager.instance().destroy_enclave(enclave)
        quiet.__exit__(None, None, None)
        deadline = time.monotonic() + 10
        while server.enclave_count() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        fds_after, children_after = len(os.listdir("/proc/self/fd")), _children()
        provision.close()
        server.stop()
    samples.sort()
    print(
        f"load -> first result over mTLS (loopback), {args.cycles} cycles: "
        f"median {statistics.median(samples) * 1e3:.0f} ms, "
        f"p90 {samples[int(len(samples) * 0.9) - 1] * 1e3:.0f} ms"
    )
    print(
        f"open fds: {fds_before} before, {fds_after} after; "
        f"child processes: {children_before} before, {children_after} after"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
