"""Trusted-machine commands: ``proxy``, ``provision-server``, ``fleet``, ``doctor`` and
``vsock-relay`` (which runs on a Nitro Enclave's parent instance)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from farside.transport.factory import ALL_TRANSPORTS, DEFAULT_TRANSPORT

from . import _common as common

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the trusted machine's commands to the ``farside`` parser's subcommands."""
    _add_proxy_parser(sub)
    _add_doctor_parser(sub)
    _add_server_parser(sub)
    _add_fleet_parsers(sub)
    _add_relay_parser(sub)


def _add_proxy_parser(sub: Any) -> None:
    proxy = common.add_parser(
        sub,
        "proxy",
        help="serve one enclave session (started by provisioners)",
        description="The RemoteEnclaveProxyServer: listen on --listen, accept the one session "
        "presenting the token, host its enclave, and exit when the session ends. Prints "
        "'farside-proxy ready ADDRESS' once it listens.",
    )
    proxy.add_argument(
        "--listen",
        required=True,
        metavar="ADDRESS",
        help="unix:/path/to.sock, host:port (port 0 picks one), or vsock:any:PORT "
        "with --transport vsock",
    )
    token = proxy.add_mutually_exclusive_group()
    token.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the session token from the first line of stdin",
    )
    token.add_argument("--token-file", metavar="FILE", help="read the session token from this file")
    proxy.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="exit if no client connects within this many seconds",
    )
    proxy.add_argument(
        "--parent-pid",
        type=int,
        metavar="PID",
        help="exit when this process (the provisioner) is no longer the parent",
    )
    proxy.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate")
    proxy.add_argument("--tls-key", metavar="FILE", help="the certificate's key")
    proxy.add_argument(
        "--private-dir",
        metavar="DIR",
        help="a directory made for this proxy alone, removed when it exits after serving",
    )
    proxy.add_argument(
        "--max-workers",
        type=int,
        default=256,
        metavar="N",
        help="enclave worker threads at once, one per client thread",
    )
    proxy.add_argument(
        "--worker-idle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="an idle worker (its client thread may have ended) exits after this",
    )
    proxy.add_argument(
        "--transport",
        choices=ALL_TRANSPORTS,
        default=DEFAULT_TRANSPORT,
        help="the session's wire: length-prefixed frames on a plain socket (TLS 1.3 on "
        "TCP), the default and several times faster, or a gRPC stream (for HTTP/2 "
        "infrastructure between client and proxy); vsock is "
        "those frames on a vsock port, for a proxy inside a Nitro Enclave whose parent "
        "runs `farside vsock-relay` (docs/hardware.md)",
    )
    proxy.add_argument(
        "--tls-ephemeral",
        metavar="HOST",
        help="serve TLS with a fresh self-signed certificate for HOST (written to tls-cert.pem)",
    )
    proxy.add_argument(
        "--client-ca", metavar="FILE", help="require client certificates signed by this CA"
    )
    proxy.add_argument(
        "--agent-fd",
        type=int,
        metavar="FD",
        help="an inherited channel to the platform agent (provisioners pass it); without it "
        "the evidence is signed by a throwaway key no client trusts",
    )
    proxy.add_argument(
        "--report-status",
        action="store_true",
        help="write status lines (measurement, calls served) to stdout",
    )
    proxy.add_argument(
        "--report-metrics",
        action="store_true",
        help="with --report-status: count calls, exit calls and bytes, and report them too "
        "(a provision server with --metrics-address asks for it)",
    )
    common.add_metrics_flag(proxy, "this proxy's session")
    _add_proxy_sandbox_arguments(proxy)
    _add_attester_arguments(proxy)
    proxy.set_defaults(func=_cmd_proxy)


def _add_attester_arguments(parser: Any, *, server: bool = False) -> None:
    whose = "each proxy's" if server else "the"
    parser.add_argument(
        "--attester",
        choices=("sim", "tsm", "nsm"),
        default="sim",
        help=f"what vouches for {whose} enclave: sim (default) the platform agent's key; tsm "
        "the TEE itself through configfs-tsm (Intel TDX, AMD SEV-SNP confidential VMs); nsm "
        "the Nitro Secure Module (AWS Nitro Enclaves). See docs/hardware.md",
    )
    parser.add_argument(
        "--tsm-root",
        metavar="DIR",
        help="configfs-tsm's report directory (default /sys/kernel/config/tsm/report)",
    )
    parser.add_argument("--nsm-device", metavar="PATH", help="the NSM device (default /dev/nsm)")


def _cmd_proxy(args: argparse.Namespace) -> int:
    from farside import TLSConfig
    from farside._config import SandboxConfig
    from farside.proxy import run_proxy

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key) or args.tls_ephemeral:
            raise common.CommandError("give --tls-cert with --tls-key, or --tls-ephemeral")
        tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca)
    elif args.client_ca and not args.tls_ephemeral:
        raise common.CommandError("--client-ca needs TLS (--tls-cert/--tls-key or --tls-ephemeral)")
    return run_proxy(
        args.listen,
        token_file=args.token_file,
        token_stdin=args.token_stdin,
        idle_timeout=args.idle_timeout,
        parent_pid=args.parent_pid,
        tls=tls,
        agent_fd=args.agent_fd,
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
        attester=args.attester,
        tsm_root=args.tsm_root,
        nsm_device=args.nsm_device,
        report_metrics=args.report_metrics,
        metrics_address=args.metrics_address,
        log_level=getattr(args, "log_level", None) or "info",
        log_format=getattr(args, "log_format", None) or "text",
    )


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
        type=common.positive_int,
        metavar="BYTES",
        help="cap the address space (RLIMIT_AS); a client may ask for less",
    )
    proxy.add_argument(
        "--open-files-limit",
        type=common.positive_int,
        metavar="N",
        help="cap open descriptors (RLIMIT_NOFILE); a client may ask for less",
    )
    proxy.add_argument(
        "--cpu-limit",
        type=common.positive_int,
        metavar="SECONDS",
        help="cap CPU time (RLIMIT_CPU: the proxy dies beyond it); a client may ask for less",
    )


def _add_doctor_parser(sub: Any) -> None:
    doctor = common.add_parser(
        sub,
        "doctor",
        help="print which sandbox layers this machine supports",
        description="Probe this machine for what `farside proxy --sandbox` uses: Landlock "
        "(filesystem, TCP, scopes, by ABI), seccomp (libseccomp through pyseccomp), resource "
        "limits and user/network namespaces. A MISSING layer is skipped by best-effort "
        "proxies and makes strict ones refuse to run enclaves.",
    )
    doctor.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from farside.proxy.sandbox import landlock_abi, probe

    print("farside doctor: what this machine offers to sandbox an enclave's proxy")
    print(f"  Landlock ABI {landlock_abi()} (6 or more has every Landlock layer)")
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


def _add_server_parser(sub: Any) -> None:
    server = common.add_parser(
        sub,
        "provision-server",
        help="the trusted machine's daemon: spawn a proxy per enclave",
        description="Serve the Provisioner service: authenticate clients (mTLS and/or a "
        "bearer token), spawn one proxy per enclave on --advertise (TLS like this server), "
        "and reap each when its session ends. Prints one line once it listens; SIGTERM or "
        "SIGINT finalizes running enclaves within a grace period, then stops. Every flag "
        "can also be set in a --config file. See docs/deploy.md.",
    )
    server.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from this TOML file: each key is a flag's name without its "
        'dashes (port = 4321, tls-cert = "...", insecure = true); flags given on the '
        "command line win",
    )
    server.add_argument("--host", default="127.0.0.1", metavar="HOST", help="address to listen on")
    server.add_argument(
        "--port", type=int, default=4321, metavar="PORT", help="port (0 picks a free one)"
    )
    server.add_argument(
        "--advertise",
        metavar="HOST",
        help="the host clients dial for proxies, when it differs from --host",
    )
    server.add_argument(
        "--tls-cert", metavar="FILE", help="server certificate (its SANs name --advertise)"
    )
    server.add_argument("--tls-key", metavar="FILE", help="the certificate's key")
    server.add_argument(
        "--client-ca", metavar="FILE", help="require client certificates from this CA (mTLS)"
    )
    server.add_argument(
        "--token-file", metavar="FILE", help="require this bearer token (alternative to mTLS)"
    )
    server.add_argument(
        "--platform-dir",
        metavar="DIR",
        help="this host's platform identity (platform init): without it, proxies sign with "
        "a key no remote client has, and every remote load fails attestation",
    )
    server.add_argument(
        "--max-enclaves", type=int, default=16, metavar="N", help="enclaves at once, in total"
    )
    server.add_argument(
        "--max-per-client", type=int, default=4, metavar="N", help="enclaves at once per client"
    )
    server.add_argument(
        "--workdir",
        metavar="DIR",
        help="where private proxy directories go (default: a fresh temporary directory)",
    )
    server.add_argument(
        "--proxy-idle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a proxy exits if its client does not connect in time",
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
    server.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="IDENTITY",
        help="a client identity (as farside status --json shows it in 'caller', e.g. "
        "cert:admin) that sees every client's enclaves; others see only their own "
        "(repeatable)",
    )
    common.add_metrics_flag(server, "its enclaves, requests and what its proxies counted")
    _add_proxy_sandbox_arguments(server)
    _add_attester_arguments(server, server=True)
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
        metavar="SECONDS",
        help="the longest a request waits for a free slot",
    )
    server.set_defaults(func=_cmd_provision_server, config_parser=server)


def _cmd_provision_server(args: argparse.Namespace) -> int:
    from farside import TLSConfig
    from farside._config import SandboxConfig
    from farside.provision.server import ProvisionServer, ProvisionServerConfig

    common.check_tls_files(
        cert=("--tls-cert", args.tls_cert),
        key=("--tls-key", args.tls_key),
        cas=[("--client-ca", args.client_ca)],
    )
    tls = None
    if args.tls_cert:
        tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca)
    elif args.client_ca:
        raise common.CommandError("--client-ca needs --tls-cert and --tls-key")
    config = ProvisionServerConfig(
        host=args.host,
        port=args.port,
        advertise=args.advertise,
        tls=tls,
        token=common.read_secret(args.token_file) if args.token_file else None,
        insecure=args.insecure,
        platform_dir=Path(args.platform_dir).absolute() if args.platform_dir else None,
        max_enclaves=args.max_enclaves,
        max_per_client=args.max_per_client,
        # Absolute: proxies start in directories of their own, where a relative one fails.
        workdir=Path(args.workdir).absolute() if args.workdir else None,
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
        proxy_attester=args.attester,
        proxy_tsm_root=args.tsm_root,
        proxy_nsm_device=args.nsm_device,
        placement_timeout=args.placement_timeout,
        operators=tuple(args.operator),
        metrics_address=args.metrics_address,
        log_format=getattr(args, "log_format", None) or "text",
    )
    server = ProvisionServer(config)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        address = server.start()
    except OSError as exc:
        server.stop()
        why = _why_not_listening(args.host, args.port) if args.ray_address is None else None
        raise common.CommandError(why or _without_grpc_advice(str(exc))) from None
    # Joining Ray (fleet mode) installs Ray's own SIGTERM handler, which kills the process
    # without stopping the server: ours must win.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if tls is None:
        logging.warning("serving WITHOUT TLS: sessions can be read and changed on the network")
    print(f"farside provision-server listening on {address}", flush=True)
    if server.metrics_address:
        logging.info("serving metrics on http://%s/metrics", server.metrics_address)
    while not done.wait(0.5):
        pass
    logging.info("shutting down: finalizing %d enclave(s)", server.enclave_count())
    server.stop()
    return 0


def _why_not_listening(host: str, port: int) -> str | None:
    """Why gRPC could not listen on host:port, found by trying it ourselves."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return f"cannot listen on {host}:{port}: {host!r} is not a known address: check --host"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"cannot listen on {host}:{port}: the port is in use (another provision "
                    "server?): stop it, or choose another --port"
                )
            if exc.errno == errno.EACCES:
                return (
                    f"cannot listen on {host}:{port}: permission denied (ports below 1024 "
                    "need privileges): choose another --port"
                )
            if exc.errno == errno.EADDRNOTAVAIL:
                return (
                    f"cannot listen on {host}:{port}: {host} is not an address of this "
                    "machine: check --host"
                )
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


def _without_grpc_advice(text: str) -> str:
    """gRPC's errors end with advice on its own variables; ours is --log-level debug."""
    marker = "; set GRPC_VERBOSITY"
    if marker in text:
        text = text[: text.index(marker)] + " (--log-level debug shows gRPC's reason)"
    return text


def _port_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit()):
        raise common.CommandError(f"--proxy-ports takes LOW-HIGH, not {text!r}")
    return int(low), int(high)


def _add_fleet_parsers(sub: Any) -> None:
    fleet = sub.add_parser(
        "fleet",
        help="fleets of trusted machines (Ray); see docs/fleet.md",
        description="Many trusted machines behind one provision server: join this machine "
        "to a fleet's Ray cluster (join), or make development TLS certificates for that "
        "cluster (certs). The provision server itself runs with --ray-address. See "
        "docs/fleet.md.",
    )
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    join = common.add_parser(
        fleet_sub,
        "join",
        help="offer this trusted machine's enclave slots to a fleet",
        description="Run ray start so that this machine joins the fleet's Ray cluster "
        "offering --slots units of the 'enclave' resource (and --label node labels). Its "
        "slots sign evidence with the platform key in --platform-dir. Needs "
        "RAY_AUTH_MODE=token, a token, and Ray's TLS variables in the environment.",
    )
    join.add_argument("--ray-address", required=True, metavar="HOST:PORT", help="the head")
    join.add_argument(
        "--slots", type=int, required=True, metavar="N", help="enclaves this host may run"
    )
    join.add_argument(
        "--platform-dir",
        required=True,
        metavar="DIR",
        help="this host's platform identity (platform init)",
    )
    join.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="a node label requests can ask for, e.g. tee=sgx (repeatable)",
    )
    join.add_argument("--node-ip", metavar="IP", help="this host's address on the trusted network")
    join.add_argument("--num-cpus", type=int, default=1, metavar="N", help="CPUs offered to Ray")
    join.add_argument("--temp-dir", metavar="DIR", help="Ray's temporary directory on this host")
    join.add_argument("--object-store-memory", type=int, metavar="BYTES", help="Ray's store")
    join.add_argument(
        "--workdir",
        metavar="DIR",
        help="where proxies' private directories go (default: a temporary directory)",
    )
    join.add_argument("--block", action="store_true", help="stay in the foreground (systemd)")
    common.add_metrics_flag(
        join, "this host's slots and running enclaves; implies --block, for as long as it serves"
    )
    join.add_argument(
        "--ray-allow-plaintext",
        action="store_true",
        help="join a Ray cluster without TLS (development only)",
    )
    join.set_defaults(func=_cmd_fleet_join)

    certs = common.add_parser(
        fleet_sub,
        "certs",
        help="make development TLS certificates for the fleet's Ray cluster",
        description="Write ca.pem, node.pem and node.key (0600): one node certificate for "
        "both serving and connecting, as Ray's TLS uses it, whose SANs are every --host. "
        "Point RAY_TLS_CA_CERT, RAY_TLS_SERVER_CERT and RAY_TLS_SERVER_KEY at them.",
    )
    certs.add_argument("--out", required=True, metavar="DIR", help="output directory")
    certs.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="HOST",
        help="a node's address (repeatable)",
    )
    certs.add_argument("--days", type=int, default=365, metavar="N", help="validity in days")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.set_defaults(func=_cmd_fleet_certs)


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
        raise common.CommandError(str(exc)) from None
    exporter = None
    if args.metrics_address:
        from farside.provision.fleet import serve_host_metrics

        exporter = serve_host_metrics(args.metrics_address, slots=args.slots, workdir=args.workdir)
        if "--block" not in command:
            command.append("--block")  # the exporter serves while this host is in the fleet
        print(f"farside fleet join: serving metrics on http://{exporter.address}/metrics")
    try:
        return subprocess.call(command, env=env)
    except OSError as exc:
        raise common.CommandError(f"cannot run {command[0]}: {exc}") from None
    finally:
        if exporter is not None:
            exporter.close()


def _cmd_fleet_certs(args: argparse.Namespace) -> int:
    from farside._devcerts import make_fleet_certs

    paths = make_fleet_certs(args.out, args.host, days=args.days, force=args.force)
    for path in paths:
        print(f"wrote {path}")
    return 0


def _add_relay_parser(sub: Any) -> None:
    relay = common.add_parser(
        sub,
        "vsock-relay",
        help="on a Nitro Enclave's parent: relay clients' TCP connections to its vsock port",
        description="Accept TCP connections on --listen and pipe each one's bytes, both ways, "
        "to the proxy listening on vsock in the enclave (farside proxy --transport vsock). "
        "Clients use the stream transport to this address; TLS runs end to end, so the "
        "relay sees ciphertext only and needs no keys. Prints one line once it listens; "
        "SIGTERM or SIGINT closes every connection and stops. See docs/hardware.md.",
    )
    relay.add_argument("--listen", required=True, metavar="HOST:PORT", help="where clients dial")
    relay.add_argument(
        "--to", required=True, metavar="vsock:CID:PORT", help="the enclave's proxy, on vsock"
    )
    relay.add_argument(
        "--max-connections",
        type=common.positive_int,
        default=64,
        metavar="N",
        help="connections relayed at once; more are closed at once",
    )
    relay.add_argument(
        "--max-per-source",
        type=common.positive_int,
        default=8,
        metavar="N",
        help="of which from one client address",
    )
    relay.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="the longest reaching the enclave may take",
    )
    relay.add_argument(
        "--linger",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="once one side of a connection has ended, how long the other may still "
        "send before both are closed",
    )
    relay.set_defaults(func=_cmd_relay)


def _cmd_relay(args: argparse.Namespace) -> int:
    from farside.transport.relay import RelayLimits, VsockRelay

    limits = RelayLimits(
        max_connections=args.max_connections,
        max_per_source=args.max_per_source,
        connect_timeout=args.connect_timeout,
        linger=args.linger,
    )
    relay = VsockRelay(args.listen, args.to, limits=limits)
    address = relay.start()
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"farside vsock-relay listening on {address}, relaying to {args.to}", flush=True)
    while not done.wait(0.5):
        pass
    relay.stop()
    return 0
