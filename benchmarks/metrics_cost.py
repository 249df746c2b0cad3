"""What metrics and tracing add to one call: on against off, side by side.

    python -m benchmarks.metrics_cost [--calls 3000] [--rounds 6] [--transport stream|grpc]

The enclaves come from an in-process provision server on loopback (plaintext), as in a
deployment: with ``metrics_address`` its proxies count every call (``--report-metrics``:
entry point, outcome, duration, bytes) and report twice a second; without it they count
nothing. Tracing on means ``farside.tracing.enable`` on the client (an SDK provider whose
batch processor drops the spans) and ``OTEL_TRACES_EXPORTER=console`` for the proxies
(spans written to their logs). The four set-ups take turns, round by round, so that all
see the same machine load; each round is a fresh enclave, a warm-up, then ``calls``
timed empty calls. Prints the median of the rounds' medians and the ratios to "off";
nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import farside
from farside import tracing
from farside.provision.server import ProvisionServer, ProvisionServerConfig

ENCLAVE = Path(__file__).with_name("bench_enclave.py")
SETUPS = ("off", "metrics", "tracing", "both")


@contextmanager
def _server(*, metrics: bool) -> Iterator[ProvisionServer]:
    work = Path(tempfile.mkdtemp(prefix="farside-bench-metrics-"))
    server = ProvisionServer(
        ProvisionServerConfig(
            host="127.0.0.1",
            port=0,
            workdir=work,
            metrics_address="127.0.0.1:0" if metrics else None,
        )
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _tracing(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    os.environ["OTEL_TRACES_EXPORTER"] = "console"
    tracing.enable(provider)
    try:
        yield
    finally:
        tracing.disable()
        del os.environ["OTEL_TRACES_EXPORTER"]
        provider.shutdown()


def _median_call(server: ProvisionServer, transport: str, calls: int) -> float:
    provision = farside.RemoteProvision(server.address, transport=transport)
    policy = farside.AttestationPolicy(trust_any_platform=True, allow_debug=True)
    try:
        with farside.load(ENCLAVE, provision=provision, policy=policy) as enclave:
            for _ in range(300):
                enclave.call("empty")
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                enclave.call("empty")
                samples.append(time.perf_counter() - start)
    finally:
        provision.close()
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--transport", choices=("grpc", "stream"), default="stream")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("farside").setLevel(logging.ERROR)  # the trust_any_platform warning
    medians: dict[str, list[float]] = {setup: [] for setup in SETUPS}
    with _server(metrics=False) as plain, _server(metrics=True) as counting:
        for _ in range(args.rounds):
            for setup in SETUPS:
                server = counting if setup in ("metrics", "both") else plain
                with _tracing(setup in ("tracing", "both")):
                    medians[setup].append(_median_call(server, args.transport, args.calls))
    base = statistics.median(medians["off"])
    print(f"empty call over {args.transport}, median of {args.rounds} rounds x {args.calls} calls:")
    for setup in SETUPS:
        value = statistics.median(medians[setup])
        spread = f"{min(medians[setup]) * 1e6:6.1f}-{max(medians[setup]) * 1e6:6.1f}"
        print(
            f"  {setup:<8} {value * 1e6:7.1f} µs  ({spread} µs)  x{value / base:5.3f}"
            f"  ({(value / base - 1) * 100:+5.1f} %)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
