"""Where the time of one farside call goes, layer by layer, on this machine.

    python -m benchmarks.cost_model [--calls N]

Measures, each as a median over N round trips after a warm-up:

1. the protocol alone: a client ``SessionCore`` and a proxy ``SessionCore`` in one
   thread, frames serialized and parsed, no I/O (the Python cost of the protocol);
2. each transport alone, both ends in this process on a Unix socket, the far end
   echoing on its reader thread, then handing each batch to a worker thread that
   echoes it (the hand-off every real call needs, since enclave code runs on a
   worker);
3. a whole farside empty call on each transport (``LocalProvision``), with the CPU
   time the client and the proxy each spent per call.

docs/performance.md explains the figures.
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import farside
from farside._proto.v1 import session_pb2 as pb
from farside.attestation import Bundle, Manifest
from farside.protocol import CallKind, Role, SessionCore
from farside.transport import factory
from farside.transport.base import Admission
from farside.transport.factory import TRANSPORTS

from ._timing import Latency, timings

ENCLAVE = Path(__file__).with_name("bench_enclave.py")


def median_us(fn: Callable[[], object], calls: int) -> float:
    return Latency.of(timings(fn, calls, warmup=300)).median_us


def protocol_only(calls: int) -> float:
    """One entry call and its result through two cores, serialized, in one thread."""
    client, proxy = SessionCore(Role.CLIENT), SessionCore(Role.PROXY)
    bundle = Bundle(manifest=Manifest(name="m", entry="e.py"), files={"e.py": b""})

    def move(source: SessionCore, target: SessionCore) -> list[Any]:
        data = pb.Batch(frames=source.frames_to_send()).SerializeToString()
        return target.receive(list(pb.Batch.FromString(data).frames))

    client.open(bundle)
    move(client, proxy)
    proxy.loaded(bundle.measurement())
    move(proxy, client)
    client.accept_evidence()  # as a client does once the evidence verified

    def round_trip() -> None:
        client.start_call(1, CallKind.ECALL, "empty", (), {})
        [event] = move(client, proxy)
        proxy.send_result(1, event.call_id, None)
        move(proxy, client)

    return median_us(round_trip, calls)


@contextmanager
def transport_pair(kind: str, hand_off: bool) -> Iterator[Callable[[], object]]:
    """A listener and a client of ``kind`` in this process; yields one ping-pong."""
    frame = [pb.Frame(output=pb.Output(thread=1, data=b"x" * 64))]

    def on_open(sender: Any) -> Callable[[list[pb.Frame]], None]:
        if not hand_off:
            return sender.send  # type: ignore[no-any-return]
        work: queue.SimpleQueue[list[pb.Frame]] = queue.SimpleQueue()

        def worker() -> None:
            while True:
                sender.send(work.get())

        threading.Thread(target=worker, daemon=True).start()
        return work.put

    with tempfile.TemporaryDirectory(prefix="farside-cost-") as tmp:
        listen = f"unix:{Path(tmp) / 's.sock'}"
        listener: Any
        client: Any
        listener = factory.listen(
            kind, listen, admission=Admission("t"), on_open=on_open, on_lost=lambda error: None
        )
        address = listener.start()
        client = factory.connect(kind, address, token="t", tls=None)
        replies: queue.SimpleQueue[list[pb.Frame]] = queue.SimpleQueue()
        client.start(replies.put, lambda error: None)

        def ping_pong() -> object:
            client.send(frame)
            return replies.get(timeout=10)

        try:
            yield ping_pong
        finally:
            client.close(timeout=1.0)
            listener.finish()  # ends the session's stream: its server thread can exit
            listener.stop(grace=0.5)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_pids() -> list[int]:
    me = str(os.getpid())
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
            if parent == me:
                children.append(int(entry.name))
    return children


def whole_call(kind: str, calls: int) -> tuple[float, float, float]:
    """(median µs, client CPU µs per call, proxy CPU µs per call) of an empty call."""
    before = set(_child_pids())
    with farside.load(ENCLAVE, provision=farside.LocalProvision(transport=kind)) as enclave:
        [proxy] = [  # not the platform agent LocalProvision also starts
            pid
            for pid in set(_child_pids()) - before
            if b"proxy" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ]
        median = median_us(lambda: enclave.call("empty"), calls)
        client_cpu, proxy_cpu = _cpu_seconds(os.getpid()), _cpu_seconds(proxy)
        for _ in range(calls):
            enclave.call("empty")
        client_cpu = (_cpu_seconds(os.getpid()) - client_cpu) / calls * 1e6
        proxy_cpu = (_cpu_seconds(proxy) - proxy_cpu) / calls * 1e6
    return median, client_cpu, proxy_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    print(f"1. protocol alone (both cores, one thread): {protocol_only(args.calls):7.1f} µs")
    for kind in TRANSPORTS:
        for hand_off in (False, True):
            with transport_pair(kind, hand_off) as ping_pong:
                took = median_us(ping_pong, args.calls)
            how = "worker hand-off" if hand_off else "echo on the reader"
            print(f"2. {kind:<6} transport alone, {how:<19}: {took:7.1f} µs")
    for kind in TRANSPORTS:
        median, client_cpu, proxy_cpu = whole_call(kind, args.calls)
        print(
            f"3. {kind:<6} farside empty call: {median:7.1f} µs "
            f"(CPU per call: client {client_cpu:5.1f} µs, proxy {proxy_cpu:5.1f} µs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
