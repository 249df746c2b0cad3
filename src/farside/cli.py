"""The ``farside`` command: demos, calling enclaves, the proxy, the provision server, keys."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farside import Provisioner, TLSConfig

__all__ = ["build_parser", "main"]


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _fail(command: str, message: object) -> int:
    print(f"farside {command}: {message}", file=sys.stderr)
    return 1


def _read_secret(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"{path!r} is empty")
    return token


def _client_tls(args: argparse.Namespace) -> TLSConfig | None:
    from farside import TLSConfig

    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


def _provisioner(args: argparse.Namespace) -> Provisioner:
    from farside import LocalProvision, RemoteProvision

    if not args.remote:
        return LocalProvision()
    token = _read_secret(args.token_file) if args.token_file else None
    return RemoteProvision(args.remote, tls=_client_tls(args), token=token)


def _add_remote_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("remote provisioning (default: a local proxy process)")
    group.add_argument("--remote", metavar="HOST:PORT", help="the provision server to use")
    group.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    group.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    group.add_argument("--token-file", metavar="FILE", help="the server's bearer token")


# ----------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    import farside
    from farside.examples.quickstart import demo_driver

    try:
        demo_driver.run(args.enclave_path, args.message, provision=_provisioner(args), decrypt=True)
    except (farside.EnclaveError, ValueError) as exc:
        return _fail("demo", exc)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import farside

    call_args = [_parse_arg(a) for a in args.args]
    try:
        with farside.load(
            args.enclave, debug=not args.no_debug, provision=_provisioner(args)
        ) as enclave:
            if args.call:
                result = enclave.call(args.call, *call_args)
            else:
                result = enclave.enter_and_run(call_args[0] if call_args else None)
    except (farside.EnclaveError, TypeError, ValueError) as exc:
        return _fail("run", exc)
    print(json.dumps(_jsonable(result)))
    return 0


def _cmd_proxy(args: argparse.Namespace) -> int:
    from farside import TLSConfig
    from farside.proxy import run_proxy

    tls = None
    if args.tls_cert or args.tls_key or args.client_ca:
        if not (args.tls_cert and args.tls_key):
            return _fail("proxy", "--tls-cert and --tls-key go together")
        tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca)
    return run_proxy(
        args.listen,
        token_file=args.token_file,
        token_stdin=args.token_stdin,
        idle_timeout=args.idle_timeout,
        parent_pid=args.parent_pid,
        tls=tls,
        platform_key=args.platform_key,
        report_status=args.report_status,
    )


def _cmd_measure(args: argparse.Namespace) -> int:
    from farside.attestation import BundleError, load_bundle

    try:
        bundle = load_bundle(args.path, debug=not args.no_debug)
    except BundleError as exc:
        return _fail("measure", exc)
    m = bundle.manifest
    print(
        f"bundle: {m.name} (entry {m.entry}, {len(bundle.files)} files, {bundle.size} bytes, "
        f"debug={m.debug})"
    )
    print(bundle.measurement().hex())
    return 0


def _cmd_provision_server(args: argparse.Namespace) -> int:
    from farside import TLSConfig
    from farside.provision.server import ProvisionServer, ProvisionServerConfig

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="farside-provision %(levelname)s %(message)s"
    )
    try:
        tls = None
        if args.tls_cert or args.tls_key:
            tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca)
        elif args.client_ca:
            raise ValueError("--client-ca needs --tls-cert and --tls-key")
        config = ProvisionServerConfig(
            host=args.host,
            port=args.port,
            advertise=args.advertise,
            tls=tls,
            token=_read_secret(args.token_file) if args.token_file else None,
            insecure=args.insecure,
            platform_dir=Path(args.platform_dir) if args.platform_dir else None,
            max_enclaves=args.max_enclaves,
            max_per_client=args.max_per_client,
            workdir=Path(args.workdir) if args.workdir else None,
            proxy_idle_timeout=args.proxy_idle_timeout,
            proxy_ports=_port_range(args.proxy_ports) if args.proxy_ports else None,
        )
        server = ProvisionServer(config)
    except (ValueError, OSError) as exc:
        return _fail("provision-server", exc)
    if tls is None:
        logging.warning("serving WITHOUT TLS: sessions can be read and changed on the network")
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        address = server.start()
    except OSError as exc:
        server.stop()
        return _fail("provision-server", exc)
    print(f"farside provision-server listening on {address}", flush=True)
    while not done.wait(0.5):
        pass
    logging.info("shutting down: finalizing %d enclave(s)", server.enclave_count())
    server.stop()
    return 0


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit()):
        raise ValueError(f"--proxy-ports takes LOW-HIGH, not {text!r}")
    return int(low), int(high)


def _cmd_platform_init(args: argparse.Namespace) -> int:
    from farside.attestation.platform import init_platform

    try:
        public = init_platform(args.dir, force=args.force)
    except (OSError, ValueError) as exc:
        return _fail("platform init", exc)
    print(f"wrote {public.with_name('platform.key')} (0600) and {public}")
    return 0


def _cmd_certs(args: argparse.Namespace) -> int:
    from farside._devcerts import make_dev_certs

    try:
        paths = make_dev_certs(
            args.out, args.host, client_name=args.client_name, days=args.days, force=args.force
        )
    except (OSError, ValueError) as exc:
        return _fail("certs", exc)
    for path in paths:
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------- parser


def _add_proxy_parser(sub: Any) -> None:
    proxy = sub.add_parser(
        "proxy",
        help="serve one enclave session (started by provisioners)",
        description="The RemoteEnclaveProxyServer: listen on --listen, accept the one session "
        "presenting the token, host its enclave, and exit when the session ends. Prints "
        "'farside-proxy ready ADDRESS' once it listens.",
    )
    proxy.add_argument(
        "--listen", required=True, help="unix:/path/to.sock or host:port (port 0 picks one)"
    )
    token = proxy.add_mutually_exclusive_group()
    token.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the session token from the first line of stdin",
    )
    token.add_argument("--token-file", help="read the session token from this file")
    proxy.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="exit if no client connects within this many seconds (default 30)",
    )
    proxy.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process (the provisioner) is no longer the parent",
    )
    proxy.add_argument("--tls-cert", help="serve TLS with this certificate")
    proxy.add_argument("--tls-key", help="the certificate's key")
    proxy.add_argument("--client-ca", help="require client certificates signed by this CA")
    proxy.add_argument("--platform-key", help="the platform key that signs attestation evidence")
    proxy.add_argument(
        "--report-status",
        action="store_true",
        help="write status lines (measurement, calls served) to stdout",
    )
    proxy.set_defaults(func=_cmd_proxy)


def _add_server_parser(sub: Any) -> None:
    server = sub.add_parser(
        "provision-server",
        help="the trusted machine's daemon: spawn a proxy per enclave",
        description="Serve the Provisioner service: authenticate clients (mTLS and/or a "
        "bearer token), spawn one proxy per enclave on --advertise (TLS like this server), "
        "and reap each when its session ends. Prints one line once it listens; SIGTERM or "
        "SIGINT finalizes running enclaves within a grace period, then stops. See "
        "docs/deploy.md.",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=4321, help="port (0 picks a free one)")
    server.add_argument(
        "--advertise",
        metavar="HOST",
        help="the host clients dial for proxies, when it differs from --host",
    )
    server.add_argument("--tls-cert", help="server certificate (its SANs name --advertise)")
    server.add_argument("--tls-key", help="the certificate's key")
    server.add_argument("--client-ca", help="require client certificates from this CA (mTLS)")
    server.add_argument("--token-file", help="require this bearer token (alternative to mTLS)")
    server.add_argument("--platform-dir", help="this host's platform identity (platform init)")
    server.add_argument("--max-enclaves", type=int, default=16, help="total (default 16)")
    server.add_argument("--max-per-client", type=int, default=4, help="per client (default 4)")
    server.add_argument("--workdir", help="where private proxy directories go (default: tmp)")
    server.add_argument(
        "--proxy-idle-timeout",
        type=float,
        default=30.0,
        help="a proxy exits if its client does not connect in time (s)",
    )
    server.add_argument(
        "--proxy-ports",
        metavar="LOW-HIGH",
        help="ports proxies listen on (default: any free port); keeps firewall rules small",
    )
    server.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext or unauthenticated clients off loopback",
    )
    server.set_defaults(func=_cmd_provision_server)


def _add_key_parsers(sub: Any) -> None:
    platform = sub.add_parser("platform", help="this trusted machine's platform identity")
    platform_sub = platform.add_subparsers(dest="platform_command", required=True, metavar="ACTION")
    init = platform_sub.add_parser(
        "init",
        help="write platform.key (0600) and platform.pub",
        description="Make this trusted machine's platform key pair (Ed25519): platform.key "
        "(mode 0600), which its proxies sign evidence with, and platform.pub, which clients "
        "trust.",
    )
    init.add_argument("--dir", required=True, help="directory for the key pair")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    init.set_defaults(func=_cmd_platform_init)

    certs = sub.add_parser(
        "certs",
        help="make a development CA and server/client certificates",
        description="Write ca.pem, server.pem, server.key (SANs: every --host), client.pem "
        "and client.key into --out, for tests and first deployments.",
    )
    certs.add_argument("--out", required=True, help="output directory")
    certs.add_argument(
        "--host",
        action="append",
        required=True,
        help="a DNS name or IP address the server is reached by (repeatable)",
    )
    certs.add_argument(
        "--client-name",
        default="farside-client",
        help="the client certificate's common name (its identity)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity (default 365)")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.set_defaults(func=_cmd_certs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``farside`` command."""
    from farside.examples.quickstart.demo_driver import DEFAULT_ENCLAVE

    parser = argparse.ArgumentParser(
        prog="farside",
        description="Run the confidential part of an application in a remote enclave.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the quickstart: encrypt a message in an enclave",
        description="Load the quickstart enclave (a local proxy, or --remote), encrypt "
        "--message inside it, print the ciphertext from inside the enclave, decrypt it there "
        "to prove the round trip, and destroy it.",
    )
    demo.add_argument("--message", required=True, help="the message to encrypt")
    demo.add_argument(
        "--enclave_path",
        "--enclave-path",
        default=str(DEFAULT_ENCLAVE),
        help="the enclave bundle (default: the packaged demo enclave)",
    )
    _add_remote_flags(demo)
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser(
        "run",
        help="load an enclave and call it from the shell",
        description="Load ENCLAVE (a .py file or package directory), call its @ecall NAME "
        "(or run() without --call) with ARGs, print the result as JSON, and destroy it. Each "
        "ARG is parsed as JSON when it is valid JSON and passed as a string otherwise.",
    )
    run.add_argument("enclave", help="the enclave bundle")
    run.add_argument("--call", metavar="NAME", help="the @ecall entry point (default: run())")
    run.add_argument("args", nargs="*", metavar="ARG", help="arguments (JSON or string)")
    run.add_argument("--no-debug", action="store_true", help="load as a non-debug enclave")
    _add_remote_flags(run)
    run.set_defaults(func=_cmd_run)

    _add_proxy_parser(sub)

    measure = sub.add_parser(
        "measure",
        help="print an enclave bundle's measurement",
        description="Print the bundle's SHA-256 measurement (64 hex digits, on the last line), "
        "the one the proxy reports on load.",
    )
    measure.add_argument("path", type=Path, help="a .py file or package directory")
    measure.add_argument("--no-debug", action="store_true", help="measure as non-debug")
    measure.set_defaults(func=_cmd_measure)

    _add_server_parser(sub)
    _add_key_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``farside`` command."""
    parser = build_parser()
    # argparse cannot take `run ENCLAVE --call NAME ARG...` (positionals after an option)
    # in one pass; the leftover plain words are the call's arguments.
    args, extra = parser.parse_known_args(argv)
    if extra and (
        args.command != "run"
        or any(word.startswith("-") and _parse_arg(word) == word for word in extra)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args = [*args.args, *extra]
    code: int = args.func(args)
    return code
