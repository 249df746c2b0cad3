"""Chaos: live sessions under random faults, with farside's promises checked after each.

    python -m benchmarks.chaos --faults N --seed S [--ci] [--no-netns] [--json FILE]

Drives live sessions, local (``LocalProvision``) and remote (a provision server it starts
on 127.0.0.1 with mTLS), on both transports ("grpc" and "stream"): client threads make
calls all along (echoes of values up to a few MiB, nested exit calls, output), while the
harness injects faults drawn from a catalogue (``FAULTS``, ``--list``):

* kill -9, and SIGSTOP then SIGCONT, of a client process, a proxy, a platform agent or
  the provision server;
* a network cut and its restore, between this process and a provision server in a
  network namespace of its own (root and ``ip netns`` only; skipped and reported
  otherwise, or with ``--no-netns``);
* garbage and truncated frames: a malformed frame on a live session, a truncated
  length-prefixed frame on a stream session, a stranger's bytes on a proxy's or the
  provision server's port;
* hostile enclave behaviours (issue 14): fork, a thread flood, an output flood without
  newline, huge and hostile values, closing and scribbling on every descriptor, stopping
  itself, exiting, holding host files, signalling its parent, changing metadata, a
  flood of one-way calls, nesting past the limit;
* deadline storms: many threads, tiny deadlines, on one session.

After every fault it checks the invariants: no call waited past its deadline + 2 s; every
completed call returned exactly its own result, once, to the thread that made it (a
nested call's exit call ran once, on that thread; its output arrived once, before the
result); no process, socket file or directory is left behind (polled up to
``SETTLE`` s); the server keeps serving (a fresh session after the fault works). Open
descriptors of this process are compared at quiet checkpoints (no session open).

The fault sequence is drawn from ``--seed`` before anything runs, so a seed names a run:
every kind once in a seeded order, then a weighted draw (``--ci``: a cheaper mix). Prints
a table of fault kinds x counts x violations and exits 1 if there was any violation.
SIGTERM and SIGINT stop the run and clean up everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER_VARIABLE = "FARSIDE_CHAOS_RUN"
SLACK = 2.0
"""A call may end at most this long after its deadline."""
SETTLE = 12.0
"""How long leftovers (processes, directories) may take to go after a fault."""
MAX_VALUE = 4 << 20

ENCLAVE_SOURCE = r'''"""The chaos harness's enclave: well-behaved calls, and hostile ones."""

import os
import posix
import signal
import sys
import threading
import time

from farside.trusted import TrustedApplication, cancelled, ecall, host


class ChaosEnclave(TrustedApplication):
    @ecall
    def echo(self, value):
        return value

    @ecall
    def nested(self, value):
        return host.call("echo", value)

    @ecall
    def speak(self, token, size):
        print("x" * size + " " + token)
        return token

    @ecall
    def sleep(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not cancelled():
            time.sleep(0.01)
        return seconds

    @ecall
    def stubborn(self, seconds):
        """Ignores cancellation: keeps its worker busy past the client's deadline."""
        time.sleep(seconds)
        return seconds

    @ecall
    def spin(self, seconds):
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return n

    # ------------------------------------------------------------ hostile

    @ecall
    def fork(self):
        try:
            pid = os.fork()
        except OSError as exc:
            return "refused: " + type(exc).__name__
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return "forked"

    @ecall
    def threads(self, count):
        stop = threading.Event()
        started = []
        try:
            for _ in range(count):
                t = threading.Thread(target=stop.wait, args=(5,), daemon=True)
                t.start()
                started.append(t)
        except RuntimeError as exc:
            return "refused after %d: %s" % (len(started), exc)
        finally:
            stop.set()
        for t in started:
            t.join(5)
        return len(started)

    @ecall
    def flood(self, size, chunk):
        written = 0
        piece = "y" * chunk
        while written < size:
            sys.stdout.write(piece)
            written += chunk
        sys.stdout.flush()
        return written

    @ecall
    def huge(self, size):
        return b"h" * size

    @ecall
    def shape(self, kind):
        if kind == "lists":
            return [[]] * 5_000_000
        if kind == "collide":
            return {(2**61 - 1) * i: 0 for i in range(1, 3000)}
        if kind == "deep":
            value = []
            for _ in range(2000):
                value = [value]
            return value
        return None

    @ecall
    def close_fds(self):
        closed = 0
        for fd in range(3, 256):
            try:
                posix.close(fd)
                closed += 1
            except OSError:
                pass
        return closed

    @ecall
    def scribble(self, junk):
        hit = 0
        for fd in range(1, 64):
            try:
                posix.write(fd, junk)
                hit += 1
            except OSError:
                pass
        return hit

    @ecall
    def self_stop(self):
        os.kill(os.getpid(), signal.SIGSTOP)
        return "resumed"

    @ecall
    def exit(self, code):
        os._exit(code)

    @ecall
    def files(self, count):
        held = []
        try:
            for i in range(count):
                held.append(open("chaos-file-%d" % (i % 8), "w"))
        except OSError as exc:
            return "refused after %d: %s" % (len(held), type(exc).__name__)
        finally:
            for f in held:
                f.close()
        return len(held)

    @ecall
    def signal_parent(self):
        try:
            os.kill(os.getppid(), signal.SIGURG)
        except OSError as exc:
            return "refused: " + type(exc).__name__
        return "sent"

    @ecall
    def chmod(self):
        target = os.path.dirname(os.__file__)
        try:
            posix.chmod(target, 0o777)
        except OSError as exc:
            return "refused: " + type(exc).__name__
        return "changed"

    @ecall
    def notify_flood(self, count):
        for i in range(count):
            host.notify("tick", i)
        return count

    @ecall
    def recurse(self, depth):
        return host.call("recurse", depth + 1)


def build_trusted_application():
    return ChaosEnclave()
'''

# A client process the harness kills or stops: loads one enclave, says "ready PID PROXY",
# then calls in a loop (nested, with output) until its stdin closes, printing "ok N" every
# 20 calls and "violation WHAT" for a wrong result or a late call.
VICTIM_SCRIPT = r"""
import os, sys, threading, time
import farside

enclave, transport, mode = sys.argv[1:4]
if mode == "local":
    provision = farside.LocalProvision(transport=transport)
    policy = None
else:
    address, ca, cert, key, pub = sys.argv[4:9]
    tls = farside.TLSConfig(ca=ca, cert=cert, key=key)
    provision = farside.RemoteProvision(address, tls=tls, transport=transport)
    policy = farside.AttestationPolicy(platform_keys=(pub,), allow_debug=True)
client = farside.load(enclave, provision=provision, policy=policy,
                      exit_handlers={"echo": lambda v: v}, files_root=None)
proxy = client.call("echo", os.getpid())
print("ready", os.getpid(), flush=True)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
n = 0
while not done.is_set():
    began = time.monotonic()
    try:
        value = {"n": n, "pad": "v" * (n % 5000)}
        if client.call("nested", value, timeout=3) != value:
            print("violation wrong result", flush=True)
    except farside.EnclaveError as exc:
        if time.monotonic() - began > 3 + 2.0:
            print("violation late", type(exc).__name__, flush=True)
        if isinstance(exc, (farside.EnclaveUnavailableError, farside.ProtocolError)):
            break
    n += 1
    if n % 20 == 0:
        print("ok", n, flush=True)
print("done", n, flush=True)
"""


def log(message: str) -> None:
    print(f"[chaos] {message}", file=sys.__stderr__, flush=True)


# --------------------------------------------------------------------- processes


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    state: str
    args: tuple[str, ...]

    @property
    def kind(self) -> str:
        args = self.args
        if "provision-server" in args:
            return "server"
        if "platform" in args and "agent" in args:
            return "agent"
        if "proxy" in args and any("farside" in a for a in args):
            return "proxy"
        if "--victim" in args or any("ready" in a and "farside.load" in a for a in args):
            return "client"
        return "other"

    def flag(self, name: str) -> str | None:
        if name in self.args:
            i = self.args.index(name)
            if i + 1 < len(self.args):
                return self.args[i + 1]
        return None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def scan(marker: str) -> list[Proc]:
    """Live processes carrying this run's marker in their environment (not this one)."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if needle not in _read(f"/proc/{entry}/environ"):
            continue
        fields = _read(f"/proc/{entry}/stat").decode(errors="replace").rpartition(")")[2].split()
        if len(fields) < 2 or fields[0] in ("Z", "X"):
            continue
        args = tuple(
            a.decode(errors="replace") for a in _read(f"/proc/{entry}/cmdline").split(b"\0")
        )
        found.append(Proc(int(entry), int(fields[1]), fields[0], args))
    return found


def alive(pid: int) -> bool:
    fields = _read(f"/proc/{pid}/stat").decode(errors="replace").rpartition(")")[2].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


def open_fds() -> Counter[str]:
    """This process's open descriptors, by kind (socket, pipe, a file's path, ...)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            kinds[re.sub(r":\[\d+\]$", "", target)] += 1
    return kinds


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def bounded(work: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """Run ``work`` on a daemon thread; (finished in time, its result or exception; or
    where it is stuck, as a stack, when it did not finish)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(work())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="chaos-bounded")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        stack = "".join(traceback.format_stack(frame)[-8:]) if frame is not None else "?"
        return False, stack
    return True, box[0] if box else None


def free_port_range(count: int, rng: random.Random) -> tuple[int, int]:
    """A range of ``count`` ports nothing listens on now."""
    for _ in range(200):
        low = rng.randrange(20000, 60000 - count)
        ok = True
        for port in range(low, low + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return low, low + count - 1
    raise RuntimeError("no free port range")


# --------------------------------------------------------------------- the record


@dataclass
class Stats:
    injected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)
    calls_ok: int = 0
    calls_failed: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    seconds: Counter[str] = field(default_factory=Counter)  # per kind: fault, repair, checks


class Record:
    """Calls in flight, their outcomes, and the violations, per fault."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stats = Stats()
        self.fault = "warm-up"
        self.index = -1
        self.inflight: dict[int, tuple[float, float, str, bool]] = {}
        self._next = 0
        self.exits: Counter[str] = Counter()  # token -> exit calls served
        self.printed: Counter[str] = Counter()  # token -> output lines seen

    def violation(self, what: str) -> None:
        with self.lock:
            self.stats.violations[self.fault] += 1
            line = f"fault #{self.index} {self.fault}: {what}"
            self.stats.details.append(line)
        log("VIOLATION " + line)

    def begin(self, timeout: float, what: str) -> int:
        with self.lock:
            self._next += 1
            self.inflight[self._next] = (time.monotonic(), timeout, what, False)
            return self._next

    def end(self, ident: int, outcome: str) -> float:
        with self.lock:
            began, timeout, what, flagged = self.inflight.pop(ident)
            if outcome == "ok":
                self.stats.calls_ok += 1
            else:
                self.stats.calls_failed[outcome] += 1
        elapsed = time.monotonic() - began
        if elapsed > timeout + SLACK and not flagged:
            self.violation(f"{what} ended {elapsed:.2f} s after it began (deadline {timeout:g} s)")
        return elapsed

    def watchdog(self, stop: threading.Event) -> None:
        """Flags calls still waiting past their deadline + SLACK (once each)."""
        while not stop.wait(0.1):
            now = time.monotonic()
            late = []
            with self.lock:
                for ident, (began, timeout, what, flagged) in self.inflight.items():
                    if not flagged and now - began > timeout + SLACK:
                        self.inflight[ident] = (began, timeout, what, True)
                        late.append((what, now - began, timeout))
            for what, waited, timeout in late:
                self.violation(f"{what} still waits after {waited:.1f} s (deadline {timeout:g} s)")


class OutputSink:
    """Stands in for ``sys.stdout``/``sys.stderr``: counts the tokens of output lines."""

    TOKEN = re.compile(r"tok-[0-9]+-[0-9]+")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.bytes = 0
        self._lock = threading.Lock()
        self._tail = ""

    def write(self, text: str) -> int:
        with self._lock:
            self.bytes += len(text)
            text = self._tail + text
            cut = text.rfind("\n")
            if cut < 0:
                self._tail = text[-64:]
                return len(text)
            lines, self._tail = text[: cut + 1], text[cut + 1 :][-64:]
        for token in self.TOKEN.findall(lines):
            with self.record.lock:
                self.record.printed[token] += 1
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# --------------------------------------------------------------------- sessions


@dataclass
class Session:
    slot: str
    mode: str  # local, remote, netns
    transport: str
    client: Any
    born: float = field(default_factory=time.monotonic)
    broken: bool = False

    def proxy_pid(self, procs: list[Proc]) -> int | None:
        handle = self.client._lease.handle
        if hasattr(handle, "process"):
            return int(handle.process.pid)
        port = self.client._lease.address.rsplit(":", 1)[1]
        for p in procs:
            listen = p.flag("--listen")
            if p.kind == "proxy" and listen is not None and listen.endswith(":" + port):
                return p.pid
        return None

    def directory(self) -> Path | None:
        handle = self.client._lease.handle
        return Path(handle.directory) if hasattr(handle, "directory") else None


SLOTS = (("local", "grpc"), ("local", "stream"), ("remote", "grpc"), ("remote", "stream"))


class Stop(Exception):  # noqa: N818 (a request, not an error)
    """SIGTERM or SIGINT: stop the run and clean up."""


# --------------------------------------------------------------------- the harness


class Chaos:
    def __init__(self, root: Path, seed: int, *, ci: bool, netns: bool) -> None:
        import farside
        from farside._devcerts import make_dev_certs
        from farside.attestation.platform import init_platform

        self.farside = farside
        self.root = root
        self.seed = seed
        self.ci = ci
        self.rng = random.Random(seed)
        self.record = Record()
        self.marker = os.environ[MARKER_VARIABLE]
        self.enclave = root / "chaos_enclave.py"
        self.enclave.write_text(ENCLAVE_SOURCE, encoding="utf-8")
        self.files = root / "files"
        self.files.mkdir()
        self.certs = root / "tls"
        make_dev_certs(self.certs, ["127.0.0.1", "localhost"])
        self.platform = root / "platform"
        init_platform(self.platform)
        self.server_work = root / "server-work"
        self.server_work.mkdir()
        self.ports = free_port_range(24, random.Random(seed ^ os.getpid()))
        self.server: subprocess.Popen[bytes] | None = None
        self.server_address = ""
        self.remote: Any = None
        self.local = {
            t: farside.LocalProvision(transport=t, stop_timeout=2.0) for t in ("grpc", "stream")
        }
        self.sessions: dict[str, Session] = {}
        self.pool_lock = threading.Lock()
        self.stop_traffic = threading.Event()
        self.traffic: list[threading.Thread] = []
        self.victims: list[subprocess.Popen[bytes]] = []
        self.netns: NetnsServer | None = None
        self.netns_wanted = netns
        self.netns_why = ""
        self.fd_baseline: Counter[str] | None = None
        self.sink = OutputSink(self.record)
        self.paused: set[int] = set()  # pids we stopped and owe a SIGCONT

    # ----------------------------------------------------------- set-up

    def start(self) -> None:
        self.start_server()
        if self.netns_wanted:
            self.netns = NetnsServer.create(self)
            if self.netns is None:
                log(f"network cut: skipped ({self.netns_why})")
        else:
            self.netns_why = "--no-netns"
        for slot in SLOTS:
            self.replace(f"{slot[0]}-{slot[1]}")
        stop = threading.Event()
        self._watchdog_stop = stop
        threading.Thread(target=self.record.watchdog, args=(stop,), daemon=True).start()
        for i in range(2 if self.ci else 3):
            thread = threading.Thread(target=self.drive, args=(i,), daemon=True, name=f"chaos-{i}")
            thread.start()
            self.traffic.append(thread)

    def start_server(self) -> None:
        from farside.provision._spawn import read_line

        port = self.server_address.rsplit(":", 1)[1] if self.server_address else "0"
        command = [
            *(sys.executable, "-m", "farside", "provision-server"),
            *("--host", "127.0.0.1", "--port", port),
            *("--tls-cert", str(self.certs / "server.pem")),
            *("--tls-key", str(self.certs / "server.key")),
            *("--client-ca", str(self.certs / "ca.pem")),
            *("--platform-dir", str(self.platform), "--workdir", str(self.server_work)),
            *("--max-enclaves", "12", "--max-per-client", "12"),
            *("--proxy-ports", f"{self.ports[0]}-{self.ports[1]}"),
        ]
        for attempt in range(50):
            with open(self.root / "server.log", "ab") as server_log:  # the child has its own
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=server_log
                )
            assert process.stdout is not None
            line = read_line(process.stdout, 30) or ""
            if "listening on" in line:
                self.server = process
                self.server_address = line.rsplit(" ", 1)[1]
                break
            process.kill()
            process.wait(10)
            if attempt == 49:
                raise RuntimeError(f"the provision server did not start: {line!r}")
            time.sleep(0.1)  # the old one's port may take a moment to free
        if self.remote is None:
            self.remote = {
                t: self.farside.RemoteProvision(
                    self.server_address, tls=self.client_tls(), transport=t
                )
                for t in ("grpc", "stream")
            }

    def client_tls(self) -> Any:
        return self.farside.TLSConfig(
            ca=self.certs / "ca.pem", cert=self.certs / "client.pem", key=self.certs / "client.key"
        )

    def policy(self) -> Any:
        return self.farside.AttestationPolicy(
            platform_keys=(self.platform / "platform.pub",), allow_debug=True
        )

    def handlers(self) -> dict[str, Callable[..., Any]]:
        record = self.record

        def echo(value: Any) -> Any:
            if isinstance(value, dict) and "token" in value:
                with record.lock:
                    record.exits[value["token"]] += 1
                return {"back": value, "ident": threading.get_ident()}
            return value

        return {"echo": echo, "tick": lambda i: None}

    def load(self, mode: str, transport: str, provision: Any = None) -> Any:
        if provision is None:
            provision = self.local[transport] if mode == "local" else self.remote[transport]
        client = self.farside.load(
            self.enclave,
            provision=provision,
            policy=None if mode == "local" else self.policy(),
            exit_handlers=self.handlers(),
            files_root=self.files,
            load_timeout=20,
        )
        client.register_exit_handler("recurse", lambda depth: client.call("recurse", depth))
        return client

    def destroy(self, client: Any, what: str, *, broken: bool = False) -> None:
        """Destroy a client, bounded: finalize (30 s at most) unless its session is broken,
        the transport's close (5 s), the server's Release (5 s)."""
        manager = self.farside.EnclaveManager.instance()
        done, error = bounded(lambda: manager.destroy_enclave(client, skip_finalize=broken), 45)
        if not done:
            self.record.violation(f"destroying {what} did not end within 45 s:\n{error}")
        elif isinstance(error, BaseException) and not isinstance(error, self.farside.EnclaveError):
            self.record.violation(f"destroying {what} raised {type(error).__name__}: {error}")

    def replace(self, slot: str) -> bool:
        """Destroy the slot's session (if any) and load a fresh one: the server serves."""
        mode, transport = slot.split("-")
        with self.pool_lock:
            old = self.sessions.pop(slot, None)
        if old is not None:
            self.destroy(old.client, f"the {slot} session", broken=old.broken)
        done, result = bounded(lambda: self.load(mode, transport), 40)
        if not done or isinstance(result, BaseException):
            why = "did not end in 40 s" if not done else f"{type(result).__name__}: {result}"
            self.record.violation(f"a fresh {slot} session failed to load: {why}")
            return False
        client = result
        ok, value = bounded(lambda: client.call("nested", {"token": "fresh"}, timeout=10), 15)
        if not ok or not isinstance(value, dict) or value.get("back") != {"token": "fresh"}:
            self.record.violation(f"a fresh {slot} session did not serve a call: {value!r}")
            self.destroy(client, f"the fresh {slot} session")
            return False
        with self.pool_lock:
            self.sessions[slot] = Session(slot, mode, transport, client)
        return True

    # ----------------------------------------------------------- traffic

    def drive(self, index: int) -> None:
        """One client thread: calls on random sessions until the run ends."""
        rng = random.Random(self.seed * 1000 + index)
        seq = 0
        me = threading.get_ident()
        while not self.stop_traffic.is_set():
            with self.pool_lock:
                sessions = [s for s in self.sessions.values() if not s.broken]
            if not sessions:
                time.sleep(0.02)
                continue
            session = rng.choice(sessions)
            seq += 1
            token = f"tok-{index}-{seq}"
            self.one_call(session, rng, token, me)
            time.sleep(rng.uniform(0.02, 0.06) if self.ci else rng.uniform(0.005, 0.03))

    def one_call(self, session: Session, rng: random.Random, token: str, me: int) -> None:
        farside = self.farside
        kind = rng.choices(["echo", "nested", "speak", "big", "sleep"], [4, 4, 2, 1, 1])[0]
        timeout = rng.uniform(1.0, 5.0)
        if kind == "echo":
            value: Any = {"token": token, "data": rng.randbytes(rng.randrange(0, 3000))}
            args: tuple[Any, ...] = ("echo", value)
            expected: Any = value
        elif kind == "nested":
            value = {"token": token, "n": rng.randrange(1 << 40), "s": "é" * rng.randrange(50)}
            args = ("nested", value)
            expected = {"back": value, "ident": me}
        elif kind == "speak":
            args = ("speak", token, rng.randrange(0, 200))
            expected = token
        elif kind == "big":
            blob = rng.randbytes(rng.randrange(1 << 20, MAX_VALUE))
            args = ("echo", blob)
            expected = blob
            timeout = 8.0
        else:
            seconds = rng.uniform(0.05, 0.6)
            args = ("sleep", seconds)
            expected = seconds
            timeout = rng.uniform(0.05, 1.0)
        what = f"{kind} on {session.slot}"
        ident = self.record.begin(timeout, what)
        try:
            result = session.client.call(*args, timeout=timeout)
        except (farside.EnclaveError, farside.ClientClosedError) as exc:
            self.record.end(ident, type(exc).__name__)
            if isinstance(exc, (farside.EnclaveUnavailableError, farside.ProtocolError)):
                session.broken = True
            return
        except Exception as exc:
            self.record.end(ident, type(exc).__name__)
            self.record.violation(f"{what} raised {type(exc).__name__}: {exc}")
            return
        self.record.end(ident, "ok")
        if result != expected:
            shown = repr(result)[:200]
            self.record.violation(f"{what} returned {shown} instead of its own result")
        if kind == "nested":
            with self.record.lock:
                served = self.record.exits.pop(token, 0)
            if served != 1:
                self.record.violation(f"{what}: its exit call ran {served} times")
        if kind == "speak":
            with self.record.lock:
                seen = self.record.printed.pop(token, 0)
            if seen != 1:
                self.record.violation(f"{what}: its output line arrived {seen} times")

    # ----------------------------------------------------------- checks

    def expected_pids(self, procs: list[Proc]) -> set[int]:
        from farside.provision import local as local_module

        expected = set()
        with self.pool_lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            pid = session.proxy_pid(procs)
            if pid is not None:
                expected.add(pid)
        servers = {self.server.pid} if self.server is not None else set()
        if self.netns is not None:
            servers |= self.netns.pids()
        expected |= servers
        for p in procs:  # the servers' agents
            if p.kind == "agent" and (p.ppid in servers or p.ppid in expected):
                expected.add(p.pid)
        for agent in list(local_module._agents.values()):
            expected.add(agent.process.pid)
        return expected

    def leftovers(self) -> list[str]:
        """What should not be there now: processes, directories, socket files."""
        procs = scan(self.marker)
        expected = self.expected_pids(procs)
        found = [f"{p.kind} process {p.pid}" for p in procs if p.pid not in expected]
        with self.pool_lock:
            sessions = list(self.sessions.values())
        local_dirs = {s.directory() for s in sessions if s.mode == "local"}
        tmp = Path(tempfile.gettempdir())
        for entry in tmp.iterdir():
            if entry.name.startswith("farside-") and entry not in local_dirs:
                found.append(f"directory {entry}")
        live_cwds = set()
        for p in procs:
            with contextlib.suppress(OSError):
                live_cwds.add(Path(os.readlink(f"/proc/{p.pid}/cwd")))
        for work in [self.server_work, *([self.netns.work] if self.netns else [])]:
            empty_server_dirs = 0
            for server_dir in work.iterdir():
                enclave_dirs = [d for d in server_dir.iterdir() if d.is_dir()]
                for d in enclave_dirs:
                    if d not in live_cwds:
                        found.append(f"directory {d}")
                if not any(d in live_cwds for d in enclave_dirs):
                    empty_server_dirs += 1
            if empty_server_dirs > 1:
                found.append(f"{empty_server_dirs} server directories in {work} (one is live)")
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode) and path.parent not in local_dirs:
                        found.append(f"socket file {path}")
        return found

    def settle(self) -> None:
        """Leftovers must be gone within SETTLE s; kill what is left so the run goes on."""
        left: list[str] = []

        def clean() -> bool:
            nonlocal left
            left = self.leftovers()
            return not left

        if wait_until(clean, SETTLE, 0.05):
            return
        for what in left:
            self.record.violation(f"left behind after {SETTLE:g} s: {what}")
        procs = scan(self.marker)
        expected = self.expected_pids(procs)
        for p in procs:
            if p.pid not in expected:
                signal_pid(p.pid, signal.SIGKILL)
        for what in left:
            if what.startswith("directory "):
                shutil.rmtree(what.split(" ", 1)[1], ignore_errors=True)

    def repair(self, fresh: str | None) -> None:
        """Replace every session that no longer serves, and ``fresh`` if none was (a fresh
        session after every fault)."""
        farside = self.farside
        with self.pool_lock:
            sessions = list(self.sessions.values())
        if any(s.broken for s in sessions):
            fresh = None  # replacing it is the fresh session
        for session in sessions:
            replace = session.slot == fresh or session.broken
            if not replace:
                try:
                    ok = session.client.call("echo", "probe", timeout=5) == "probe"
                except (farside.EnclaveError, farside.ClientClosedError):
                    ok = False
                replace = not ok
            if replace:
                self.replace(session.slot)
        for slot in SLOTS:
            name = f"{slot[0]}-{slot[1]}"
            if name not in self.sessions:
                self.replace(name)

    def checkpoint(self) -> None:
        """Quiet point: no session, no traffic; this process's descriptors vs the first one."""
        with self.pool_lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for session in sessions:
            self.destroy(session.client, f"the {session.slot} session", broken=session.broken)
        self.settle()
        counts: list[Counter[str]] = []

        def steady() -> bool:
            counts.append(open_fds())
            return self.fd_baseline is None or counts[-1].total() <= self.fd_baseline.total()

        wait_until(steady, 5, 0.1)
        if self.fd_baseline is None:
            self.fd_baseline = counts[-1]
            log(f"descriptors at the first quiet point: {self.fd_baseline.total()}")
        elif counts[-1].total() > self.fd_baseline.total():
            self.record.violation(
                f"this process holds {counts[-1].total()} descriptors at a quiet point, "
                f"{self.fd_baseline.total()} at the first; more: "
                f"{dict(counts[-1] - self.fd_baseline)}"
            )
            self.fd_baseline = counts[-1]
        for slot in SLOTS:
            self.replace(f"{slot[0]}-{slot[1]}")

    # ----------------------------------------------------------- the run

    def run(self, plan: list[tuple[str, int]], checkpoint_every: int) -> None:
        self.checkpoint()  # the baseline, with every kind of session made once
        for index, (kind, draw) in enumerate(plan):
            self.record.fault, self.record.index = kind, index
            fault = FAULTS[kind]
            rng = random.Random(draw)
            began = time.monotonic()
            try:
                injected = fault.inject(self, rng)
            except Stop:
                raise
            except Exception as exc:
                self.record.violation(
                    f"injecting it failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                )
                injected = True
            finally:
                self.resume_paused()
            if injected:
                self.record.stats.injected[kind] += 1
            else:
                self.record.stats.skipped[kind] += 1
            fresh = "-".join(SLOTS[index % len(SLOTS)])
            self.repair(fresh=fresh if fault.provisioning or not self.ci else None)
            self.settle()
            self.record.stats.seconds[kind] += time.monotonic() - began
            if (index + 1) % checkpoint_every == 0 or index + 1 == len(plan):
                self.checkpoint()
            if (index + 1) % 25 == 0 or index + 1 == len(plan):
                s = self.record.stats
                log(
                    f"{index + 1}/{len(plan)} faults, {sum(s.violations.values())} violations, "
                    f"{s.calls_ok} calls served ({time.monotonic() - began:.1f} s for the last)"
                )

    def resume_paused(self) -> None:
        for pid in list(self.paused):
            signal_pid(pid, signal.SIGCONT)
            self.paused.discard(pid)

    def cleanup(self) -> None:
        """Stop everything this run started (bounded)."""
        self.stop_traffic.set()
        self.resume_paused()
        for thread in self.traffic:
            thread.join(10)
        if getattr(self, "_watchdog_stop", None) is not None:
            self._watchdog_stop.set()
        with self.pool_lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for session in sessions:
            bounded(
                lambda s=session: self.farside.EnclaveManager.instance().destroy_enclave(s.client),
                10,
            )
        for victim in self.victims:
            with contextlib.suppress(OSError):
                victim.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                victim.wait(5)
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)
        if self.netns is not None:
            self.netns.close()
        if self.remote is not None:
            for provision in self.remote.values():
                with contextlib.suppress(Exception):
                    provision.close()
        for p in scan(self.marker):  # whatever is left, orphans included
            signal_pid(p.pid, signal.SIGCONT)
            signal_pid(p.pid, signal.SIGKILL)


# --------------------------------------------------------------------- network namespace


class NetnsServer:
    """A provision server in a network namespace, reached over a veth pair from here."""

    def __init__(self, chaos: Chaos, tag: str, subnet: str) -> None:
        self.chaos = chaos
        self.namespace = f"fschaos-{tag}"
        self.veth_host = f"fc{tag}h"[:15]
        self.veth_ns = f"fc{tag}n"[:15]
        self.host_ip = f"{subnet}.2"
        self.server_ip = f"{subnet}.1"
        self.work = chaos.root / "netns-work"
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.provision: dict[str, Any] = {}
        self.created: list[str] = []

    @staticmethod
    def ip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=15, check=False
        )

    @classmethod
    def create(cls, chaos: Chaos) -> NetnsServer | None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            chaos.netns_why = "needs root and `ip netns`"
            return None
        tag = f"{os.getpid() % 100000}"
        subnet = f"10.233.{os.getpid() % 250 + 1}"
        self = cls(chaos, tag, subnet)
        try:
            self._setup()
        except Exception as exc:
            chaos.netns_why = f"cannot set up the namespace: {exc}"
            self.close()
            return None
        return self

    def _setup(self) -> None:
        from farside._devcerts import make_dev_certs
        from farside.provision._spawn import read_line

        done = self.ip("netns", "add", self.namespace)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip())
        self.created.append("netns")
        for step in [
            ("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns),
            ("link", "set", self.veth_ns, "netns", self.namespace),
            ("addr", "add", f"{self.host_ip}/24", "dev", self.veth_host),
            ("-n", self.namespace, "addr", "add", f"{self.server_ip}/24", "dev", self.veth_ns),
            ("-n", self.namespace, "link", "set", "lo", "up"),
            ("-n", self.namespace, "link", "set", self.veth_ns, "up"),
            ("link", "set", self.veth_host, "up"),
        ]:
            done = self.ip(*step)
            if done.returncode != 0:
                raise RuntimeError(f"ip {' '.join(step)}: {done.stderr.strip()}")
            if step[1] == "add":
                self.created.append("veth")
        certs = self.chaos.root / "netns-tls"
        make_dev_certs(certs, [self.server_ip])
        self.certs = certs
        self.work.mkdir()
        command = [
            *("ip", "netns", "exec", self.namespace, sys.executable, "-m", "farside"),
            *("provision-server", "--host", self.server_ip, "--port", "0"),
            *("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")),
            *("--client-ca", str(certs / "ca.pem"), "--platform-dir", str(self.chaos.platform)),
            *("--workdir", str(self.work)),
        ]
        with open(self.chaos.root / "netns-server.log", "ab") as server_log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=server_log
            )
        assert self.process.stdout is not None
        line = read_line(self.process.stdout, 30) or ""
        if "listening on" not in line:
            raise RuntimeError(f"the namespace's provision server said {line!r}")
        self.address = line.rsplit(" ", 1)[1]
        farside = self.chaos.farside
        tls = farside.TLSConfig(
            ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key"
        )
        self.provision = {
            t: farside.RemoteProvision(self.address, tls=tls, transport=t)
            for t in ("grpc", "stream")
        }
        for provision in self.provision.values():  # its channel, before the first quiet point
            provision.server_status(timeout=20)

    def pids(self) -> set[int]:
        return (
            {self.process.pid}
            if self.process is not None and self.process.poll() is None
            else set()
        )

    def link(self, up: bool) -> None:
        self.ip("link", "set", self.veth_host, "up" if up else "down")

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for provision in self.provision.values():
            with contextlib.suppress(Exception):
                provision.close()
        if "veth" in self.created:
            self.ip("link", "del", self.veth_host)
        if "netns" in self.created:
            self.ip("netns", "del", self.namespace)
        self.created.clear()


# --------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    inject: Callable[[Chaos, random.Random], bool]  # False: skipped (cannot here)
    weight: int  # in the full campaign's draw
    ci_weight: int  # in --ci's (0: only in the first pass, where every kind runs once)
    doc: str
    provisioning: bool = False  # it may touch provisioning: --ci loads a fresh session after


def _pick(
    chaos: Chaos,
    rng: random.Random,
    modes: tuple[str, ...] = ("local", "remote"),
    transports: tuple[str, ...] = ("grpc", "stream"),
) -> Session | None:
    slots = [f"{m}-{t}" for m, t in SLOTS if m in modes and t in transports]
    slot = rng.choice(slots)
    with chaos.pool_lock:
        return chaos.sessions.get(slot)


def _calls(
    chaos: Chaos, session: Session, specs: list[tuple[str, Any, float]]
) -> list[threading.Thread]:
    """Start calls on ``session`` from threads of their own: (entry, argument, timeout)."""
    threads = []
    for i, (entry, argument, timeout) in enumerate(specs):
        token = f"tok-9{chaos.record.index}-{i}"

        def work(
            entry: str = entry,
            argument: Any = argument,
            timeout: float = timeout,
            token: str = token,
        ) -> None:
            farside = chaos.farside
            me = threading.get_ident()
            value = {"token": token, "v": argument} if entry == "nested" else argument
            ident = chaos.record.begin(timeout, f"{entry} during the fault on {session.slot}")
            try:
                result = session.client.call(entry, value, timeout=timeout)
            except (farside.EnclaveError, farside.ClientClosedError) as exc:
                chaos.record.end(ident, type(exc).__name__)
                return
            except Exception as exc:
                chaos.record.end(ident, type(exc).__name__)
                chaos.record.violation(f"{entry} raised {type(exc).__name__}: {exc}")
                return
            chaos.record.end(ident, "ok")
            expected = {"back": value, "ident": me} if entry == "nested" else value
            if entry in ("sleep", "stubborn"):
                expected = argument
            if entry == "spin":  # it counts its loops
                expected = result if isinstance(result, int) else "a count"
            if result != expected:
                chaos.record.violation(f"{entry} returned {result!r:.200} instead of its own")
            if entry == "nested":
                with chaos.record.lock:
                    served = chaos.record.exits.pop(token, 0)
                if served != 1:
                    chaos.record.violation(f"nested: its exit call ran {served} times")

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _waiting(chaos: Chaos, session: Session, rng: random.Random) -> list[threading.Thread]:
    threads = _calls(
        chaos,
        session,
        [
            ("sleep", rng.uniform(0.3, 1.5), 3.0),
            ("nested", rng.randrange(1 << 30), rng.uniform(1.0, 3.0)),
        ],
    )
    time.sleep(0.1)
    return threads


def _outcome(chaos: Chaos, kind: str, outcome: str) -> None:
    with chaos.record.lock:
        chaos.record.stats.outcomes[kind][outcome[:80]] += 1


def proxy_kill(chaos: Chaos, rng: random.Random) -> bool:
    session = _pick(chaos, rng)
    if session is None:
        return False
    pid = session.proxy_pid(scan(chaos.marker))
    threads = _waiting(chaos, session, rng)
    if pid is None or not signal_pid(pid, signal.SIGKILL):
        chaos.record.violation(f"no proxy process found for the {session.slot} session")
    _join(threads, 3.0 + SLACK + 1)
    session.broken = True
    return True


def proxy_stop(chaos: Chaos, rng: random.Random) -> bool:
    session = _pick(chaos, rng)
    if session is None:
        return False
    pid = session.proxy_pid(scan(chaos.marker))
    if pid is None:
        chaos.record.violation(f"no proxy process found for the {session.slot} session")
        return True
    threads = _waiting(chaos, session, rng)
    chaos.paused.add(pid)
    signal_pid(pid, signal.SIGSTOP)
    time.sleep(rng.uniform(0.1, 0.5) if chaos.ci else rng.uniform(0.2, 1.5))
    chaos.resume_paused()
    _join(threads, 3.0 + SLACK + 1)
    try:
        served = session.client.call("echo", "after", timeout=5) == "after"
    except chaos.farside.EnclaveError as exc:
        served = False
        _outcome(chaos, "proxy-stop", f"after: {type(exc).__name__}")
    if served:
        _outcome(chaos, "proxy-stop", "the session served on after SIGCONT")
    return True


def _agent_pid(chaos: Chaos, remote: bool) -> int | None:
    if remote:
        assert chaos.server is not None
        for p in scan(chaos.marker):
            if p.kind == "agent" and p.ppid == chaos.server.pid:
                return p.pid
        return None
    from farside.provision import local as local_module

    agents = [a for a in local_module._agents.values() if a.alive]
    return agents[0].process.pid if agents else None


def agent_kill(chaos: Chaos, rng: random.Random) -> bool:
    remote = rng.random() < 0.5
    transport = rng.choice(("grpc", "stream"))
    pid = _agent_pid(chaos, remote)
    if pid is None:
        chaos.record.violation(f"no {'server' if remote else 'local'} platform agent found")
        return True
    signal_pid(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 5)
    chaos.replace(f"{'remote' if remote else 'local'}-{transport}")  # the next load works
    return True


def agent_stop(chaos: Chaos, rng: random.Random) -> bool:
    remote = rng.random() < 0.5
    transport = rng.choice(("grpc", "stream"))
    pid = _agent_pid(chaos, remote)
    if pid is None:
        chaos.record.violation(f"no {'server' if remote else 'local'} platform agent found")
        return True
    chaos.paused.add(pid)
    signal_pid(pid, signal.SIGSTOP)
    slot = f"{'remote' if remote else 'local'}-{transport}"
    loading = threading.Thread(target=chaos.replace, args=(slot,), daemon=True)
    loading.start()
    time.sleep(rng.uniform(0.1, 0.5) if chaos.ci else rng.uniform(0.2, 1.5))
    chaos.resume_paused()
    loading.join(60)
    return True


def server_kill(chaos: Chaos, rng: random.Random) -> bool:
    assert chaos.server is not None
    chaos.server.kill()
    chaos.server.wait(10)
    if chaos.server.stdout is not None:
        chaos.server.stdout.close()
    session = _pick(chaos, rng, modes=("remote",))
    if session is not None:  # running sessions keep serving
        try:
            ok = session.client.call("nested", {"token": "after-kill"}, timeout=5)
            _outcome(chaos, "server-kill", "a running session served on" if ok else "?")
            chaos.record.exits.pop("after-kill", None)
        except chaos.farside.EnclaveError as exc:
            chaos.record.violation(f"a running remote session failed after the kill: {exc}")
    chaos.start_server()  # as its operator would
    chaos.replace(f"remote-{rng.choice(('grpc', 'stream'))}")
    return True


def server_stop(chaos: Chaos, rng: random.Random) -> bool:
    assert chaos.server is not None
    pid = chaos.server.pid
    chaos.paused.add(pid)
    signal_pid(pid, signal.SIGSTOP)
    loading = threading.Thread(
        target=chaos.replace, args=(f"remote-{rng.choice(('grpc', 'stream'))}",), daemon=True
    )
    loading.start()
    time.sleep(rng.uniform(0.1, 0.5) if chaos.ci else rng.uniform(0.2, 1.5))
    chaos.resume_paused()
    loading.join(60)
    return True


def _victim(chaos: Chaos, rng: random.Random) -> subprocess.Popen[bytes] | None:
    from farside.provision._spawn import read_line

    mode = rng.choice(("local", "remote"))
    transport = rng.choice(("grpc", "stream"))
    args = [str(chaos.enclave), transport, mode]
    if mode == "remote":
        args += [chaos.server_address]
        args += [str(chaos.certs / n) for n in ("ca.pem", "client.pem", "client.key")]
        args.append(str(chaos.platform / "platform.pub"))
    process = subprocess.Popen(
        [sys.executable, "-c", VICTIM_SCRIPT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    chaos.victims.append(process)
    assert process.stdout is not None
    line = read_line(process.stdout, 60) or ""
    if not line.startswith("ready"):
        chaos.record.violation(f"a {mode} {transport} client process did not load: {line!r}")
        process.kill()
        process.wait(10)
        return None
    _victim_lines(chaos, process, want_ok=True, timeout=15)
    return process


def _victim_lines(
    chaos: Chaos, process: subprocess.Popen[bytes], *, want_ok: bool, timeout: float
) -> bool:
    """Read the client's lines until an "ok" (want_ok) or its end; violations are recorded."""
    from farside.provision._spawn import read_line

    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = read_line(process.stdout, max(0.0, deadline - time.monotonic()))
        if line is None:
            return False
        if line.startswith("violation"):
            chaos.record.violation(f"client process: {line}")
        elif (line.startswith("ok") and want_ok) or line.startswith("done"):
            return True
    return False


def client_kill(chaos: Chaos, rng: random.Random) -> bool:
    process = _victim(chaos, rng)
    if process is not None:
        process.kill()
        process.wait(10)
        chaos.victims.remove(process)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    return True


def client_stop(chaos: Chaos, rng: random.Random) -> bool:
    process = _victim(chaos, rng)
    if process is None:
        return True
    chaos.paused.add(process.pid)
    signal_pid(process.pid, signal.SIGSTOP)
    time.sleep(rng.uniform(0.2, 2.0))
    chaos.resume_paused()
    if not _victim_lines(chaos, process, want_ok=True, timeout=15):
        chaos.record.violation("a client process did not go on calling after SIGCONT")
    assert process.stdin is not None
    process.stdin.close()
    if not _victim_lines(chaos, process, want_ok=False, timeout=15):
        chaos.record.violation("a client process did not end when told to")
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        chaos.record.violation("a client process did not exit within 15 s of its end")
        process.kill()
        process.wait(10)
    chaos.victims.remove(process)
    if process.stdout is not None:
        process.stdout.close()
    return True


def net_cut(chaos: Chaos, rng: random.Random) -> bool:
    netns = chaos.netns
    if netns is None:
        return False
    transport = rng.choice(("grpc", "stream"))
    seconds = rng.uniform(0.3, 1.5) if chaos.ci else rng.choice((0.5, 1.5, 3.0, 9.0))
    provision = netns.provision[transport]
    done, client = bounded(lambda: chaos.load("netns", transport, provision), 40)
    if not done or isinstance(client, BaseException):
        chaos.record.violation(f"a session to the namespace's server failed to load: {client!r}")
        return True
    session = Session(f"netns-{transport}", "netns", transport, client)
    threads = _calls(
        chaos,
        session,
        [("sleep", seconds / 2, seconds + 2.0), ("nested", 7, seconds + 4.0), ("sleep", 0.2, 12.0)],
    )
    time.sleep(0.05)
    netns.link(up=False)
    try:
        time.sleep(seconds)
    finally:
        netns.link(up=True)
    _join(threads, 12.0 + SLACK + 1)
    try:
        survived = client.call("echo", "after", timeout=12) == "after"
    except chaos.farside.EnclaveError as exc:
        survived = False
        _outcome(chaos, "net-cut", f"{seconds:g} s cut: {type(exc).__name__}")
    if survived:
        _outcome(chaos, "net-cut", f"{seconds:g} s cut: the session survived")
    chaos.destroy(client, "the namespace session")
    done, fresh = bounded(lambda: chaos.load("netns", transport, provision), 40)
    if not done or isinstance(fresh, BaseException):
        chaos.record.violation(f"a fresh session to the namespace's server failed: {fresh!r}")
    else:
        chaos.destroy(fresh, "the fresh namespace session")
    return True


def garbage_frame(chaos: Chaos, rng: random.Random) -> bool:
    from farside._proto.v1 import session_pb2 as pb

    session = _pick(chaos, rng)
    if session is None:
        return False
    threads = _waiting(chaos, session, rng)
    junk = rng.randbytes(rng.randrange(1, 300))
    frame = rng.choice(
        [
            pb.Frame(result=pb.Result(call_id=rng.randrange(1, 1 << 40), value=junk)),
            pb.Frame(
                call=pb.Call(call_id=rng.randrange(1, 1 << 40), thread=7, name="echo", args=junk)
            ),
            pb.Frame(chunk=pb.Chunk(data=junk)),
            pb.Frame(result=pb.Result(call_id=1, value=b"\xc1" + junk)),
        ]
    )
    with contextlib.suppress(Exception):
        session.client._transport.send([frame])
    _join(threads, 3.0 + SLACK + 1)
    session.broken = True
    _outcome(chaos, "garbage-frame", frame.WhichOneof("kind") or "?")
    return True


def truncated_frame(chaos: Chaos, rng: random.Random) -> bool:
    session = _pick(chaos, rng, modes=("local",), transports=("stream",))
    if session is None:
        return False
    connection = session.client._transport._connection
    threads = _waiting(chaos, session, rng)
    variant = rng.choice(("short", "huge", "junk"))
    if variant == "short":  # says 64 KiB, sends 10 bytes: the rest of the stream is its body
        data = (65536).to_bytes(4, "big") + rng.randbytes(10)
    elif variant == "huge":  # past the 16 MiB cap
        data = (1 << 30).to_bytes(4, "big") + rng.randbytes(10)
    else:
        data = rng.randbytes(rng.randrange(1, 64))
    with connection._send_lock, contextlib.suppress(OSError):
        connection._sock.sendall(data)
    _join(threads, 3.0 + SLACK + 1)
    session.broken = True
    _outcome(chaos, "truncated-frame", variant)
    return True


def _junk(rng: random.Random) -> bytes:
    return rng.choice(
        [
            rng.randbytes(rng.randrange(1, 4096)),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(rng.randrange(0, 200)),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(30),
            (100).to_bytes(4, "big") + b"farside-stream/1\n" + rng.randbytes(20),
            b"",
        ]
    )


def _poke(address: str, data: bytes, hold: float) -> None:
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address[5:]
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.socket()
        target = (host, int(port))
    sock.settimeout(2)
    try:
        sock.connect(target)
        sock.sendall(data)
        time.sleep(hold)
    except OSError:
        pass
    finally:
        sock.close()


def stranger_bytes(chaos: Chaos, rng: random.Random) -> bool:
    session = _pick(chaos, rng)
    if session is None:
        return False
    _poke(session.client._lease.address, _junk(rng), rng.uniform(0, 0.3))
    try:  # a stranger never disturbs the session
        value = {"token": f"tok-8{chaos.record.index}-0"}
        ok = session.client.call("nested", value, timeout=5)
        if ok != {"back": value, "ident": threading.get_ident()}:
            chaos.record.violation(f"the {session.slot} session answered {ok!r} after a stranger")
        chaos.record.exits.pop(value["token"], None)
    except chaos.farside.EnclaveError as exc:
        chaos.record.violation(
            f"a stranger's bytes broke the {session.slot} session: {type(exc).__name__}: {exc}"
        )
    return True


def garbage_server(chaos: Chaos, rng: random.Random) -> bool:
    for _ in range(rng.randrange(1, 4)):
        _poke(chaos.server_address, _junk(rng), rng.uniform(0, 0.2))
    chaos.replace(f"remote-{rng.choice(('grpc', 'stream'))}")  # it still serves
    return True


def deadline_storm(chaos: Chaos, rng: random.Random) -> bool:
    session = _pick(chaos, rng)
    if session is None:
        return False
    specs = []
    for _ in range(rng.randrange(8, 20)):
        entry = rng.choice(("sleep", "stubborn", "spin", "nested", "echo"))
        argument: Any = rng.uniform(0, 0.3) if entry in ("sleep", "stubborn", "spin") else 5
        specs.append((entry, argument, rng.uniform(0.002, 0.2)))
    _join(_calls(chaos, session, specs), 0.2 + SLACK + 1)
    try:
        if session.client.call("echo", "after", timeout=5) != "after":
            chaos.record.violation("a session answered wrongly after a deadline storm")
    except chaos.farside.EnclaveError as exc:
        chaos.record.violation(f"the {session.slot} session failed after a deadline storm: {exc}")
    return True


def _hostile(
    entry: str,
    make: Callable[[Chaos, random.Random], tuple[Any, ...]],
    timeout: float = 10.0,
    breaks: bool = False,
) -> Callable[[Chaos, random.Random], bool]:
    def inject(chaos: Chaos, rng: random.Random) -> bool:
        session = _pick(chaos, rng)
        if session is None:
            return False
        args = make(chaos, rng)
        ident = chaos.record.begin(timeout, f"hostile {entry} on {session.slot}")
        try:
            result = session.client.call(entry, *args, timeout=timeout)
            outcome = repr(result) if not isinstance(result, bytes) else f"{len(result)} bytes"
            chaos.record.end(ident, "ok")
        except (chaos.farside.EnclaveError, chaos.farside.ClientClosedError) as exc:
            outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
            chaos.record.end(ident, type(exc).__name__)
        except Exception as exc:
            chaos.record.end(ident, type(exc).__name__)
            chaos.record.violation(f"hostile {entry} raised {type(exc).__name__}: {exc}")
            outcome = type(exc).__name__
        _outcome(chaos, f"hostile-{entry}", outcome)
        if breaks:
            session.broken = True
        return True

    return inject


def _scribble_junk(chaos: Chaos, rng: random.Random) -> tuple[Any, ...]:
    return (rng.choice([b"status - \xc2\xb2\n", b"z" * 70000, rng.randbytes(512)]),)


def _threads_args(c: Chaos, r: random.Random) -> tuple[Any, ...]:
    return (r.randrange(50, 300 if c.ci else 1000),)


def _flood_args(c: Chaos, r: random.Random) -> tuple[Any, ...]:
    return (r.randrange(1 << 20, (4 if c.ci else 16) << 20), r.randrange(1000, 65536))


def _huge_args(c: Chaos, r: random.Random) -> tuple[Any, ...]:
    return (r.randrange(1 << 20, (8 if c.ci else 64) << 20),)


def _notify_args(c: Chaos, r: random.Random) -> tuple[Any, ...]:
    return (r.randrange(1000, 5000 if c.ci else 20000),)


def _none(c: Chaos, r: random.Random) -> tuple[Any, ...]:
    return ()


# kind: (inject, weight, weight in --ci, what it does, may touch provisioning)
FAULTS: dict[str, Fault] = {
    "proxy-kill": Fault(proxy_kill, 6, 4, "kill -9 a session's proxy while calls wait", True),
    "proxy-stop": Fault(proxy_stop, 4, 2, "SIGSTOP a proxy for a while, then SIGCONT", True),
    "agent-kill": Fault(agent_kill, 3, 2, "kill -9 the local or the server's platform agent", True),
    "agent-stop": Fault(agent_stop, 2, 0, "SIGSTOP a platform agent while a load waits", True),
    "server-kill": Fault(server_kill, 2, 0, "kill -9 the provision server; restart it", True),
    "server-stop": Fault(
        server_stop, 2, 0, "SIGSTOP the provision server while a load waits", True
    ),
    "client-kill": Fault(
        client_kill, 3, 0, "kill -9 a client process in the middle of calls", True
    ),
    "client-stop": Fault(client_stop, 2, 0, "SIGSTOP a client process, then SIGCONT", True),
    "net-cut": Fault(net_cut, 3, 0, "take the link to a namespaced server down, then up", True),
    "garbage-frame": Fault(garbage_frame, 5, 4, "a malformed frame on a live session", True),
    "truncated-frame": Fault(truncated_frame, 4, 2, "a truncated or oversized stream frame", True),
    "stranger-bytes": Fault(stranger_bytes, 4, 16, "junk on a proxy's socket from a stranger"),
    "garbage-server": Fault(garbage_server, 3, 2, "junk on the provision server's port", True),
    "deadline-storm": Fault(deadline_storm, 6, 16, "8-20 calls with 2-200 ms deadlines"),
    "hostile-fork": Fault(_hostile("fork", _none), 2, 8, "enclave forks"),
    "hostile-threads": Fault(
        _hostile("threads", _threads_args), 2, 1, "enclave starts hundreds of threads"
    ),
    "hostile-flood": Fault(
        _hostile("flood", _flood_args, 30.0), 2, 0, "enclave prints MiBs without a newline"
    ),
    "hostile-huge": Fault(
        _hostile("huge", _huge_args, 30.0), 2, 0, "enclave returns a value of up to 64 MiB"
    ),
    "hostile-shape": Fault(
        _hostile("shape", lambda c, r: (r.choice(("lists", "collide", "deep")),), 20.0),
        2,
        4,
        "enclave returns [[]]*5e6, colliding int keys, 2000-deep lists",
    ),
    "hostile-close-fds": Fault(
        _hostile("close_fds", _none, 5.0, breaks=True),
        2,
        2,
        "enclave closes every descriptor 3-255",
        True,
    ),
    "hostile-scribble": Fault(
        _hostile("scribble", _scribble_junk, 5.0, breaks=True),
        2,
        2,
        "enclave writes junk to every descriptor 1-63",
        True,
    ),
    "hostile-self-stop": Fault(
        _hostile("self_stop", _none, 1.0, breaks=True), 2, 0, "enclave sends itself SIGSTOP", True
    ),
    "hostile-exit": Fault(
        _hostile("exit", lambda c, r: (r.randrange(256),), 5.0, breaks=True),
        2,
        2,
        "enclave calls os._exit",
        True,
    ),
    "hostile-files": Fault(
        _hostile("files", lambda c, r: (r.randrange(65, 300),)),
        2,
        4,
        "enclave opens hundreds of host files",
    ),
    "hostile-signal": Fault(_hostile("signal_parent", _none), 2, 8, "enclave signals its parent"),
    "hostile-chmod": Fault(
        _hostile("chmod", _none), 2, 6, "enclave chmods the interpreter's files"
    ),
    "hostile-notify": Fault(
        _hostile("notify_flood", _notify_args, 30.0), 2, 1, "enclave floods one-way calls"
    ),
    "hostile-recurse": Fault(
        _hostile("recurse", lambda c, r: (0,), 30.0),
        2,
        4,
        "enclave and client call each other past the nesting limit",
    ),
}


def make_plan(
    count: int, seed: int, *, ci: bool, only: list[str] | None = None
) -> list[tuple[str, int]]:
    """The run's faults, from the seed alone: every kind once (seeded order), then drawn."""
    rng = random.Random(seed)
    names = sorted(only or FAULTS)
    kinds = list(names)
    rng.shuffle(kinds)
    weights = [FAULTS[k].ci_weight if ci else FAULTS[k].weight for k in names]
    plan = kinds[:count]
    while len(plan) < count:
        plan.append(rng.choices(names, weights)[0])
    return [(kind, rng.randrange(1 << 62)) for kind in plan]


# --------------------------------------------------------------------- report


def table(stats: Stats) -> str:
    lines = [
        "| fault | what | injected | skipped | violations | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind in sorted(FAULTS):
        lines.append(
            f"| {kind} | {FAULTS[kind].doc} | {stats.injected[kind]} | {stats.skipped[kind]} "
            f"| {stats.violations[kind]} | {stats.seconds[kind]:.0f} |"
        )
    other = {k: v for k, v in stats.violations.items() if k not in FAULTS}
    for kind, count in sorted(other.items()):
        lines.append(f"| ({kind}) | outside a fault | 0 | 0 | {count} | |")
    total_v = sum(stats.violations.values())
    lines.append(
        f"| **total** | | **{sum(stats.injected.values())}** | {sum(stats.skipped.values())} "
        f"| **{total_v}** | {sum(stats.seconds.values()):.0f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=200, help="how many faults to inject")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default: random)")
    parser.add_argument("--ci", action="store_true", help="the cheaper fault mix (CI)")
    parser.add_argument("--no-netns", action="store_true", help="skip the network cut")
    parser.add_argument("--json", metavar="FILE", help="also write the outcome as JSON here")
    parser.add_argument("--list", action="store_true", help="list the fault kinds and exit")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(FAULTS), metavar="KIND", help="only these kinds"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's directory (logs) after violations"
    )
    args = parser.parse_args(argv)
    if args.list:
        for kind in sorted(FAULTS):
            print(f"{kind:20} {FAULTS[kind].doc}")
        return 0
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    plan = make_plan(args.faults, seed, ci=args.ci, only=args.only)
    digest = hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]
    log(f"seed {seed}: {len(plan)} faults (plan {digest}), pid {os.getpid()}")

    root = Path(tempfile.mkdtemp(prefix="farside-chaos-"))
    (root / "tmp").mkdir()
    os.environ[MARKER_VARIABLE] = secrets.token_hex(8)
    os.environ["TMPDIR"] = str(root / "tmp")
    tempfile.tempdir = str(root / "tmp")

    def on_signal(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    chaos: Chaos | None = None
    interrupted = ""
    real_stdout, real_stderr = sys.stdout, sys.stderr
    try:
        chaos = Chaos(root, seed, ci=args.ci, netns=not args.no_netns)
        sys.stdout = sys.stderr = chaos.sink  # type: ignore[assignment]
        chaos.start()
        chaos.run(plan, 50 if args.ci else 100)
    except Stop as exc:
        interrupted = str(exc)
        log(f"stopped by {interrupted}: cleaning up")
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr
        if chaos is not None:
            done, error = bounded(chaos.cleanup, 90)
            if not done or isinstance(error, BaseException):
                log(f"cleanup: {'did not end in 90 s' if not done else error!r}")
        if args.keep and (chaos is None or chaos.record.stats.details):
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if chaos is None:
        return 2
    stats = chaos.record.stats
    elapsed = time.monotonic() - started
    command = f"python -m benchmarks.chaos --faults {args.faults} --seed {seed}"
    command += " --ci" if args.ci else ""
    command += " --no-netns" if args.no_netns else ""
    command += " --only " + " ".join(args.only) if args.only else ""
    print(
        f"`{command}` on {datetime.date.today().isoformat()}, {platform.system()} "
        f"{platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"farside {importlib.metadata.version('farside')}; plan {digest}; took {elapsed:.0f} s"
        + (f"; STOPPED by {interrupted}" if interrupted else "")
        + "\n"
    )
    print(table(stats))
    print(
        f"\ncalls served {stats.calls_ok:,}; failed (allowed kinds) "
        f"{dict(stats.calls_failed.most_common())}"
    )
    if chaos.netns is None:
        print(f"network cut: skipped ({chaos.netns_why})")
    print("\noutcomes of the faults (what farside or the sandbox did):")
    for kind in sorted(stats.outcomes):
        shown = "; ".join(f"{k} x{v}" for k, v in stats.outcomes[kind].most_common(6))
        print(f"  {kind}: {shown}")
    if stats.details:
        print("\nviolations:")
        for line in stats.details[:200]:
            print("  " + line)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seed": seed,
                    "faults": args.faults,
                    "plan": digest,
                    "elapsed": elapsed,
                    "interrupted": interrupted,
                    "injected": dict(stats.injected),
                    "skipped": dict(stats.skipped),
                    "skipped_why": {"net-cut": chaos.netns_why} if chaos.netns is None else {},
                    "violations": dict(stats.violations),
                    "details": stats.details,
                    "calls_ok": stats.calls_ok,
                    "calls_failed": dict(stats.calls_failed),
                    "outcomes": {k: dict(v) for k, v in stats.outcomes.items()},
                    "seconds": dict(stats.seconds),
                },
                indent=1,
            )
        )
    return 1 if stats.details or interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
