"""The ``farside`` command: demos, calling enclaves, the proxy, the provision server, keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from farside import AttestationPolicy, Provisioner, TLSConfig
    from farside.attestation import Bundle

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
        return LocalProvision(transport=args.transport)
    token = _read_secret(args.token_file) if args.token_file else None
    return RemoteProvision(
        args.remote,
        tls=_client_tls(args),
        token=token,
        transport=args.transport,
        node_label=getattr(args, "node_label", None),
    )


def _policy(args: argparse.Namespace, *, debug: bool) -> AttestationPolicy | None:
    from farside import AttestationPolicy

    if not (args.platform_key or args.trust_any_platform):
        return None  # the default: exactly this bundle, on a platform the provisioner vouches for
    return AttestationPolicy(
        platform_keys=tuple(args.platform_key or ()),
        allow_debug=debug,
        trust_any_platform=args.trust_any_platform,
    )


def _add_remote_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=("grpc", "stream"),
        default=None,
        help="the session's wire: gRPC (default, or $FARSIDE_TRANSPORT) or the faster "
        "stream transport (docs/performance.md)",
    )
    group = parser.add_argument_group("remote provisioning (default: a local proxy process)")
    group.add_argument("--remote", metavar="HOST:PORT", help="the provision server to use")
    group.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    group.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    group.add_argument("--token-file", metavar="FILE", help="the server's bearer token")
    group.add_argument(
        "--node-label",
        metavar="KEY=VALUE",
        help="fleet mode: place the enclave on a host with this label (e.g. tee=sgx)",
    )
    group.add_argument(
        "--platform-key",
        metavar="FILE",
        action="append",
        help="a trusted machine's platform.pub: its evidence is accepted (repeatable)",
    )
    group.add_argument(
        "--trust-any-platform",
        action="store_true",
        help="accept evidence signed by any platform (development only; logged loudly)",
    )


# ----------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    import farside
    from farside.examples.quickstart import demo_driver

    try:
        demo_driver.run(
            args.enclave_path,
            args.message,
            provision=_provisioner(args),
            policy=_policy(args, debug=True),
            decrypt=True,
        )
    except (farside.EnclaveError, ValueError) as exc:
        return _fail("demo", exc)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import farside

    call_args = [_parse_arg(a) for a in args.args]
    try:
        with farside.load(
            args.enclave,
            debug=not args.no_debug,
            provision=_provisioner(args),
            policy=_policy(args, debug=not args.no_debug),
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
    from farside._config import SandboxConfig
    from farside.proxy import run_proxy

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key) or args.tls_ephemeral:
            return _fail("proxy", "give --tls-cert with --tls-key, or --tls-ephemeral")
        tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca)
    elif args.client_ca and not args.tls_ephemeral:
        return _fail("proxy", "--client-ca needs TLS (--tls-cert/--tls-key or --tls-ephemeral)")
    return run_proxy(
        args.listen,
        token_file=args.token_file,
        token_stdin=args.token_stdin,
        idle_timeout=args.idle_timeout,
        parent_pid=args.parent_pid,
        tls=tls,
        platform_key=args.platform_key,
        report_status=args.report_status,
        tls_ephemeral=args.tls_ephemeral,
        client_ca=args.client_ca,
        max_workers=args.max_workers,
        worker_idle_timeout=args.worker_idle_timeout,
        private_dir=args.private_dir,
        transport=args.transport,
        sandbox=args.sandbox,
        limits=SandboxConfig(
            memory=args.memory_limit, open_files=args.open_files_limit, cpu_seconds=args.cpu_limit
        ),
    )


def _cmd_doctor(args: argparse.Namespace) -> int:
    from farside.proxy._landlock import abi_version
    from farside.proxy._sandbox import probe

    print("farside doctor: what this machine offers to sandbox an enclave's proxy")
    print(f"  Landlock ABI {abi_version()} (6 or more has every Landlock layer)")
    missing = 0
    for layer, why in probe().items():
        print(f"  {layer:15} {'available' if not why else 'MISSING: ' + why}")
        missing += bool(why)
    print(
        "--sandbox strict will refuse to run enclaves here (netns is needed only by "
        "proxies on a Unix socket)"
        if missing
        else "every layer is available: --sandbox strict works here"
    )
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from farside.attestation import BundleError, load_bundle, verify_bundle_signature
    from farside.attestation.identity import UNSIGNED

    try:
        # Without --no-debug, the bundle's own flag (enclave.toml's, an archive's, else debug).
        bundle = load_bundle(args.path, debug=False if args.no_debug else None)
        signer = verify_bundle_signature(bundle)
    except BundleError as exc:
        return _fail("measure", exc)
    print(_describe(bundle))
    print(f"signer: {'unsigned' if signer == UNSIGNED else signer.hex()}")
    print(bundle.measurement().hex())
    return 0


def _describe(bundle: Bundle) -> str:
    m = bundle.manifest
    return (
        f"bundle: {m.name} (entry {m.entry}, {len(bundle.files)} files, {bundle.size} bytes, "
        f"product_id={m.product_id}, security_version={m.security_version}, debug={m.debug})"
    )


def _cmd_build(args: argparse.Namespace) -> int:
    from farside.attestation import BundleError, build_bundle

    try:
        bundle = build_bundle(
            args.path,
            args.out,
            name=args.name,
            product_id=args.product_id,
            security_version=args.security_version,
            debug=False if args.no_debug else None,
        )
    except (BundleError, OSError) as exc:
        return _fail("build", exc)
    print(f"wrote {args.out}")
    print(_describe(bundle))
    print(bundle.measurement().hex())
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from farside.attestation import generate_signer_key

    try:
        public = generate_signer_key(args.out, force=args.force)
    except (OSError, ValueError) as exc:
        return _fail("keygen", exc)
    print(f"wrote {args.out} (0600) and {public}; the signer identity:")
    print(_signer_of_key(args.out).hex())
    return 0


def _signer_of_key(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    from farside.attestation import load_signer_key
    from farside.attestation.identity import signer_of

    public = load_signer_key(path).public_key()
    return signer_of(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _cmd_sign(args: argparse.Namespace) -> int:
    from farside.attestation import sign_bundle, verify_bundle_signature

    try:
        bundle = sign_bundle(args.archive, args.key)
        signer = verify_bundle_signature(bundle)
    except ValueError as exc:  # BundleError for the archive, ValueError for the key
        return _fail("sign", exc)
    print(f"signed {args.archive}")
    print(_describe(bundle))
    print(f"measurement: {bundle.measurement().hex()}")
    print(signer.hex())
    return 0


def _cmd_provision_server(args: argparse.Namespace) -> int:
    from farside import TLSConfig
    from farside._config import SandboxConfig
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
            proxy_sandbox=args.sandbox,
            proxy_limits=SandboxConfig(
                memory=args.memory_limit,
                open_files=args.open_files_limit,
                cpu_seconds=args.cpu_limit,
            ),
            ray_address=args.ray_address,
            ray_node_ip=args.ray_node_ip,
            ray_allow_plaintext=args.ray_allow_plaintext,
            placement_timeout=args.placement_timeout,
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
    # Joining Ray (fleet mode) installs Ray's own SIGTERM handler, which kills the process
    # without stopping the server: ours must win.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
    proxy.add_argument(
        "--private-dir",
        metavar="DIR",
        help="a directory made for this proxy alone, removed when it exits after serving",
    )
    proxy.add_argument(
        "--max-workers",
        type=int,
        default=256,
        help="enclave worker threads at once, one per client thread (default 256)",
    )
    proxy.add_argument(
        "--worker-idle-timeout",
        type=float,
        default=30.0,
        help="an idle worker (its client thread may have ended) exits after this (s)",
    )
    proxy.add_argument(
        "--transport",
        choices=("grpc", "stream"),
        default="grpc",
        help="the session's wire: a gRPC stream (default), or length-prefixed frames "
        "on a plain socket (TLS 1.3 on TCP), which is several times faster",
    )
    proxy.add_argument(
        "--tls-ephemeral",
        metavar="HOST",
        help="serve TLS with a fresh self-signed certificate for HOST (written to tls-cert.pem)",
    )
    proxy.add_argument("--client-ca", help="require client certificates signed by this CA")
    proxy.add_argument("--platform-key", help="the platform key that signs attestation evidence")
    proxy.add_argument(
        "--report-status",
        action="store_true",
        help="write status lines (measurement, calls served) to stdout",
    )
    _add_proxy_sandbox_arguments(proxy)
    proxy.set_defaults(func=_cmd_proxy)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _add_proxy_sandbox_arguments(proxy: Any) -> None:
    from farside._config import SANDBOX_MODES

    proxy.add_argument(
        "--sandbox",
        choices=SANDBOX_MODES,
        default="best-effort",
        help="confine the proxy process before enclave code runs (Landlock, seccomp, rlimits, "
        "network namespace): best-effort (default) applies what this machine offers and "
        "logs the rest; strict refuses to run the enclave unless every layer applies; off "
        "does nothing. A client may ask for a stricter mode, never a weaker one. See "
        "`farside doctor` and docs/security.md",
    )
    proxy.add_argument(
        "--memory-limit",
        type=_positive_int,
        metavar="BYTES",
        help="cap the address space (RLIMIT_AS); a client may ask for less",
    )
    proxy.add_argument(
        "--open-files-limit",
        type=_positive_int,
        metavar="N",
        help="cap open descriptors (RLIMIT_NOFILE); a client may ask for less",
    )
    proxy.add_argument(
        "--cpu-limit",
        type=_positive_int,
        metavar="SECONDS",
        help="cap CPU time (RLIMIT_CPU: the proxy dies beyond it); a client may ask for less",
    )


def _add_doctor_parser(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="print which sandbox layers this machine supports",
        description="Probe this machine for what `farside proxy --sandbox` uses: Landlock "
        "(filesystem, TCP, scopes, by ABI), seccomp (libseccomp through pyseccomp), resource "
        "limits and user/network namespaces. A MISSING layer is skipped by best-effort "
        "proxies and makes strict ones refuse to run enclaves.",
    )
    doctor.set_defaults(func=_cmd_doctor)


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
    _add_proxy_sandbox_arguments(server)
    fleet = server.add_argument_group("fleet mode (see docs/fleet.md)")
    fleet.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="place enclaves on the trusted hosts of this Ray cluster (its head's address); "
        "needs RAY_AUTH_MODE=token and Ray's TLS in the environment",
    )
    fleet.add_argument(
        "--ray-node-ip",
        metavar="IP",
        help="this machine's address in the Ray cluster (when Ray guesses it wrong)",
    )
    fleet.add_argument(
        "--ray-allow-plaintext",
        action="store_true",
        help="accept a Ray cluster without TLS (development only; logged loudly)",
    )
    fleet.add_argument(
        "--placement-timeout",
        type=float,
        default=30.0,
        help="the longest a request waits for a free slot (s, default 30)",
    )
    server.set_defaults(func=_cmd_provision_server)


def _cmd_fleet_join(args: argparse.Namespace) -> int:
    import subprocess

    from farside.provision.fleet import FleetConfigError, check_ray_security, join_command

    try:
        for warning in check_ray_security(os.environ, allow_plaintext=args.ray_allow_plaintext):
            print(f"farside fleet join: WARNING: {warning}", file=sys.stderr)
        command, env = join_command(
            ray_address=args.ray_address,
            slots=args.slots,
            platform_dir=Path(args.platform_dir),
            labels=args.label or (),
            node_ip=args.node_ip,
            num_cpus=args.num_cpus,
            temp_dir=args.temp_dir,
            object_store_memory=args.object_store_memory,
            workdir=args.workdir,
            block=args.block,
        )
    except FleetConfigError as exc:
        return _fail("fleet join", exc)
    try:
        return subprocess.call(command, env=env)
    except OSError as exc:
        return _fail("fleet join", f"cannot run {command[0]}: {exc}")


def _cmd_fleet_certs(args: argparse.Namespace) -> int:
    from farside._devcerts import make_fleet_certs

    try:
        paths = make_fleet_certs(args.out, args.host, days=args.days, force=args.force)
    except (OSError, ValueError) as exc:
        return _fail("fleet certs", exc)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from farside._proto.v1 import provision_pb2 as pb
    from farside._proto.v1 import provision_pb2_grpc as pb_grpc

    try:
        tls = _client_tls(args)
        token = _read_secret(args.token_file) if args.token_file else None
        channel = (
            grpc.secure_channel(args.address, tls.channel_credentials())
            if tls is not None
            else grpc.insecure_channel(args.address)
        )
    except ValueError as exc:
        return _fail("status", exc)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        reply = pb_grpc.ProvisionerStub(channel).ListEnclaves(
            pb.ListEnclavesRequest(), timeout=args.timeout, metadata=metadata
        )
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        details = exc.details() if isinstance(exc, grpc.Call) else ""
        return _fail("status", f"the provision server at {args.address} answered {code}: {details}")
    finally:
        channel.close()
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(reply), indent=2))
        return 0
    print(f"hosts ({len(reply.hosts)}):")
    for host in reply.hosts:
        labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
        state = "alive" if host.alive else "DEAD"
        print(
            f"  {host.address:<20} {state:<5} slots {host.slots_free}/{host.slots_total} free"
            f"  labels {labels}"
        )
    print(f"enclaves ({len(reply.enclaves)}):")
    for e in reply.enclaves:
        print(
            f"  {e.enclave_id}  {e.name:<24} {e.host or '-':<16} {e.address:<22} "
            f"{e.client:<24} up {e.uptime_seconds:7.1f} s  calls {e.calls_served}"
        )
    return 0


def _add_fleet_parsers(sub: Any) -> None:
    fleet = sub.add_parser("fleet", help="fleets of trusted machines (Ray); see docs/fleet.md")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    join = fleet_sub.add_parser(
        "join",
        help="offer this trusted machine's enclave slots to a fleet",
        description="Run ray start so that this machine joins the fleet's Ray cluster "
        "offering --slots units of the 'enclave' resource (and --label node labels). Its "
        "slots sign evidence with the platform key in --platform-dir. Needs "
        "RAY_AUTH_MODE=token, a token, and Ray's TLS variables in the environment.",
    )
    join.add_argument("--ray-address", required=True, metavar="HOST:PORT", help="the head")
    join.add_argument("--slots", type=int, required=True, help="enclaves this host may run")
    join.add_argument(
        "--platform-dir", required=True, help="this host's platform identity (platform init)"
    )
    join.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="a node label requests can ask for, e.g. tee=sgx (repeatable)",
    )
    join.add_argument("--node-ip", metavar="IP", help="this host's address on the trusted network")
    join.add_argument("--num-cpus", type=int, default=1, help="CPUs offered to Ray (default 1)")
    join.add_argument("--temp-dir", help="Ray's temporary directory on this host")
    join.add_argument("--object-store-memory", type=int, metavar="BYTES", help="Ray's store")
    join.add_argument("--workdir", help="where proxies' private directories go (default: tmp)")
    join.add_argument("--block", action="store_true", help="stay in the foreground (systemd)")
    join.add_argument(
        "--ray-allow-plaintext",
        action="store_true",
        help="join a Ray cluster without TLS (development only)",
    )
    join.set_defaults(func=_cmd_fleet_join)

    certs = fleet_sub.add_parser(
        "certs",
        help="make development TLS certificates for the fleet's Ray cluster",
        description="Write ca.pem, node.pem and node.key (0600): one node certificate for "
        "both serving and connecting, as Ray's TLS uses it, whose SANs are every --host. "
        "Point RAY_TLS_CA_CERT, RAY_TLS_SERVER_CERT and RAY_TLS_SERVER_KEY at them.",
    )
    certs.add_argument("--out", required=True, help="output directory")
    certs.add_argument(
        "--host", action="append", required=True, help="a node's address (repeatable)"
    )
    certs.add_argument("--days", type=int, default=365, help="validity (default 365)")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.set_defaults(func=_cmd_fleet_certs)

    status = sub.add_parser(
        "status",
        help="list a provision server's hosts, free slots and running enclaves",
        description="Ask the provision server at ADDRESS (a fleet-mode server lists every "
        "trusted host of its fleet) for its hosts, their free slots, and its enclaves.",
    )
    status.add_argument("address", metavar="HOST:PORT", help="the provision server")
    status.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signed the server's cert")
    status.add_argument("--tls-cert", metavar="FILE", help="client certificate (mTLS)")
    status.add_argument("--tls-key", metavar="FILE", help="client key (mTLS)")
    status.add_argument("--token-file", metavar="FILE", help="the server's bearer token")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    status.add_argument("--json", action="store_true", help="print the reply as JSON")
    status.set_defaults(func=_cmd_status)


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


def _add_bundle_parsers(sub: Any) -> None:
    build = sub.add_parser(
        "build",
        help="build an enclave bundle archive (.fsb)",
        description="Write PATH (a .py file or package directory) as a deterministic .fsb "
        "archive with its manifest. Manifest fields come from the flags, else the package's "
        "enclave.toml ([enclave] name, product_id, security_version, debug), else the "
        "defaults (the file or directory name, 0, 0, debug). Prints the measurement on the "
        "last line.",
    )
    build.add_argument("path", type=Path, help="a .py file or package directory")
    build.add_argument(
        "--out", type=Path, required=True, metavar="FILE.fsb", help="the archive to write (.fsb)"
    )
    build.add_argument(
        "--name", metavar="N", help="the enclave's name (default: the file or directory name)"
    )
    build.add_argument("--product-id", type=int, metavar="N", help="the product id (default 0)")
    build.add_argument(
        "--security-version", type=int, metavar="N", help="the security version (default 0)"
    )
    build.add_argument("--no-debug", action="store_true", help="build a non-debug enclave")
    build.set_defaults(func=_cmd_build)

    keygen = sub.add_parser(
        "keygen",
        help="make a signer key for bundles (Ed25519)",
        description="Write a signer key (PKCS#8 PEM, mode 0600) to --out and its public key "
        "next to it (.pub). Prints the signer identity (SHA-256 of the public key) on the "
        "last line.",
    )
    keygen.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the key to write (signer.key)"
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(func=_cmd_keygen)

    sign = sub.add_parser(
        "sign",
        help="sign a built bundle archive",
        description="Sign the archive's measurement with the signer key, adding (or replacing) "
        "its signature in place. Prints the signer identity on the last line.",
    )
    sign.add_argument(
        "archive", type=Path, metavar="FILE.fsb", help="a .fsb archive (farside build)"
    )
    sign.add_argument(
        "--key", type=Path, required=True, metavar="FILE", help="the signer key (farside keygen)"
    )
    sign.set_defaults(func=_cmd_sign)


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
    _add_doctor_parser(sub)

    measure = sub.add_parser(
        "measure",
        help="print an enclave bundle's measurement",
        description="Print the bundle's manifest, its signer ('signer: HEX' after checking the "
        "signature, or 'signer: unsigned') and its SHA-256 measurement (64 hex digits, on the "
        "last line), the one the proxy reports on load.",
    )
    measure.add_argument("path", type=Path, help="a .py file, package directory or .fsb archive")
    measure.add_argument("--no-debug", action="store_true", help="measure as non-debug")
    measure.set_defaults(func=_cmd_measure)

    _add_server_parser(sub)
    _add_fleet_parsers(sub)
    _add_key_parsers(sub)
    _add_bundle_parsers(sub)
    from farside import evidence_cli

    evidence_cli.add_parser(sub)
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
