"""``farside provision-server --metrics-address``: what Prometheus scrapes, counted right.

The server runs as a subprocess (as an operator runs it), with TLS and a bearer token,
at most one enclave per client; the client opts into its own metrics with
``farside.metrics.enable``. Calls (one failing, two with an exit call), a refused token,
a refused second enclave and a refused attestation must all show up on ``/metrics``
within a few seconds, and nothing there may go down once the proxy has ended.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import farside
import farside.metrics

from ._provision import PKI, ServerProcess, pki
from ._support import WORKER, wait_until

__all__ = ["pki"]  # fixtures used here

TOKEN = "metrics-test-token-0123456789abcdef"
METRICS_LINE = re.compile(r"serving metrics on http://(\S+)/metrics")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    """Every sample of ``/metrics``, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, family: str, /, **labels: str) -> float:
    return samples.get((family, tuple(sorted(labels.items()))), 0.0)


def registry_samples(registry: CollectorRegistry) -> Samples:
    samples: Samples = {}
    for family in registry.collect():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def server(pki: PKI) -> Iterator[tuple[ServerProcess, str]]:
    """``farside provision-server`` with TLS, a token and --metrics-address on port 0."""
    root = Path(tempfile.mkdtemp(prefix="farside-test-metrics-"))
    token_file = root / "token"
    token_file.write_text(TOKEN)
    identity = "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
    args = ["--port", "0", "--tls-cert", str(pki.main.server_cert)]
    args += ["--tls-key", str(pki.main.server_key), "--token-file", str(token_file)]
    args += ["--platform-dir", str(pki.platform), "--workdir", str(root)]
    args += ["--max-per-client", "1", "--metrics-address", "127.0.0.1:0"]
    args += ["--operator", identity, "--log-format", "json"]
    process = ServerProcess(args, log=root.parent / f"{root.name}.log")
    try:
        process.wait_ready()

        def metrics_address() -> str | None:
            for line in process.stderr().splitlines():
                match = METRICS_LINE.search(line)
                if match:
                    return match[1]
            return None

        assert wait_until(metrics_address, 10), process.stderr()
        yield process, str(metrics_address())
    finally:
        process.stop()
        log = process.stderr()
        shutil.rmtree(root, ignore_errors=True)
        (root.parent / f"{root.name}.log").unlink(missing_ok=True)
        for line in log.splitlines():  # --log-format json: every line is one JSON object
            if line.startswith("{"):
                assert "ts" in json.loads(line)


def test_metrics_count_what_the_server_and_its_proxies_did(
    server: tuple[ServerProcess, str], pki: PKI, transport: str
) -> None:
    process, metrics = server
    registry = CollectorRegistry()
    farside.metrics.enable(registry)
    tls = farside.TLSConfig(ca=pki.main.ca)
    provision = farside.RemoteProvision(process.address, tls=tls, token=TOKEN)
    wrong = farside.RemoteProvision(process.address, tls=tls, token="not-" + TOKEN)
    try:
        with farside.load(
            WORKER, provision=provision, policy=pki.policy(), exit_handlers={"audit": len}
        ) as enclave:
            for word in ("a", "b", "c"):
                assert enclave.call("echo", word) == {"args": [word], "kwargs": {}}
            assert enclave.call("call_host", "audit", "four") == 4
            assert enclave.call("call_host", "audit", "xy") == 2
            with pytest.raises(farside.EnclaveCallError, match="boom"):
                enclave.call("fail", "boom")
            with pytest.raises(farside.EnclaveCallError):
                enclave.call("not_an_entry_point")
            with pytest.raises(farside.EnclaveLoadError) as refused:
                farside.load(WORKER, provision=provision, policy=pki.policy())
            assert refused.value.code is farside.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(farside.EnclaveLoadError) as denied:
                farside.load(WORKER, provision=wrong, policy=pki.policy())
            assert denied.value.code is farside.StatusCode.PERMISSION_DENIED

            def counted() -> bool:
                now = scrape(metrics)
                return value(now, "farside_calls_total", entry_point="echo", outcome="ok") == 3

            assert wait_until(counted, 5, interval=0.1), scrape(metrics)
            running = scrape(metrics)
            assert value(running, "farside_enclaves_running") == 1
            assert value(running, "farside_provisions_total", outcome="ok") == 1
            assert value(running, "farside_provisions_total", outcome="refused_capacity") == 1
            assert value(running, "farside_provisions_total", outcome="refused_auth") == 1
            assert value(running, "farside_provisions_total", outcome="failed") == 0
            calls = {
                (dict(labels)["entry_point"], dict(labels)["outcome"]): v
                for (name, labels), v in running.items()
                if name == "farside_calls_total"
            }
            assert calls == {
                ("initialize", "ok"): 1,
                ("echo", "ok"): 3,
                ("call_host", "ok"): 2,
                ("fail", "error"): 1,
                ("other", "error"): 1,
            }
            assert value(running, "farside_call_duration_seconds_count", entry_point="echo") == 3
            assert (
                value(
                    running, "farside_call_duration_seconds_bucket", entry_point="echo", le="+Inf"
                )
                == 3
            )
            assert value(running, "farside_call_duration_seconds_sum", entry_point="echo") > 0
            assert value(running, "farside_exit_calls_total", name="audit") == 2
            assert value(running, "farside_bytes_total", direction="received") > 0
            assert value(running, "farside_bytes_total", direction="sent") > 0
            assert value(running, "process_resident_memory_bytes") > 0

            # farside status --json shows this enclave's counters, and (to an operator)
            # the server's totals.
            flags = ["--tls-ca", str(pki.main.ca), "--token-file", str(_token_file(process))]
            status = subprocess.run(
                [sys.executable, "-m", "farside", "status", process.address, "--json", *flags],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            reply = json.loads(status.stdout)
            [info] = reply["enclaves"]
            names = {c["name"] for c in info["counters"]}
            assert {"farside_calls_total", "farside_exit_calls_total"} <= names
            assert any(c["name"] == "farside_provisions_total" for c in reply["counters"])

        # Attestation refused on the client (an unexpected measurement): counted there.
        policy = farside.AttestationPolicy(
            platform_keys=(pki.platform_pub,), measurements=("00" * 32,), allow_debug=True
        )
        with pytest.raises(farside.AttestationError):
            farside.load(WORKER, provision=provision, policy=policy)
        client = registry_samples(registry)
        assert value(client, "farside_attestation_failures_total", check="measurement") == 1
        assert value(client, "farside_bytes_total", direction="sent") > 0
        assert value(client, "farside_bytes_total", direction="received") > 0

        def ended() -> bool:
            now = scrape(metrics)
            sessions = sum(v for (n, _), v in now.items() if n == "farside_sessions_total")
            return value(now, "farside_enclaves_running") == 0 and sessions == 2

        assert wait_until(ended, 15, interval=0.2), scrape(metrics)
        after = scrape(metrics)
        assert value(after, "farside_sessions_total", transport=transport, outcome="closed") >= 1
        for key, before in running.items():  # counters never go down when a proxy ends
            if key[0].startswith(("farside_calls", "farside_exit", "farside_provisions")):
                assert after.get(key, 0.0) >= before, key
        assert value(after, "farside_provisions_total", outcome="ok") == 2
    finally:
        farside.metrics.disable()
        provision.close()
        wrong.close()


def _token_file(process: ServerProcess) -> Path:
    args = process.process.args
    assert isinstance(args, list)
    return Path(str(args[args.index("--token-file") + 1]))


def test_status_watch_refreshes(server: tuple[ServerProcess, str], pki: PKI) -> None:
    process, _ = server
    flags = ["--watch", "0.2", "--count", "3", "--tls-ca", str(pki.main.ca)]
    flags += ["--token-file", str(_token_file(process))]
    done = subprocess.run(
        [sys.executable, "-m", "farside", "status", process.address, "--json", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["operator"] for line in lines)
