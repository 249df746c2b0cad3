"""What the command groups share: flags, their help, secrets, and how errors are told.

Importing this module is cheap: farside's own modules are imported inside the
functions that need them, so ``farside --help`` loads no gRPC or cryptography.

Errors reach the user at one boundary (``farside.cli.main``, through
``describe_error``): one line naming the cause and, where farside knows it, the flag
that fixes it; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farside.transport.factory import TRANSPORTS

if TYPE_CHECKING:
    from farside import AttestationPolicy, Provisioner, TLSConfig

__all__ = [
    "LOG_LEVELS",
    "OUTPUT_FLAGS",
    "CommandError",
    "HelpFormatter",
    "add_metrics_flag",
    "add_parser",
    "add_remote_flags",
    "check_tls_files",
    "client_tls",
    "config_words",
    "configure_logging",
    "describe_error",
    "jsonable",
    "parse_arg",
    "parse_call_args",
    "policy",
    "positive_float",
    "positive_int",
    "print_json",
    "provisioner",
    "read_secret",
]

LOG_LEVELS = ("debug", "info", "warning", "error")


class CommandError(Exception):
    """A mistake in what the command was given; its message is the one line printed."""


# ----------------------------------------------------------------------------- parsers


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default in its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or isinstance(default, list)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _output_flags() -> argparse.ArgumentParser:
    """``-v`` and ``--log-level``, accepted before or after the command's name."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="say more: tracebacks of errors and info log lines; -vv: debug log lines, "
        "gRPC's own among them",
    )
    flags.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        metavar="LEVEL",
        help=f"log from this level up: {', '.join(LOG_LEVELS)} (default: info for servers, "
        "warning otherwise); debug also shows gRPC's own log lines",
    )
    flags.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=argparse.SUPPRESS,
        help="a daemon's log lines: text (default, each timestamped) or json (one object per "
        "line: ts, level, logger, process, pid, message); docs/operations.md",
    )
    return flags


OUTPUT_FLAGS = _output_flags()


def add_parser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command's parser: the shared help formatter and ``-v``/``--log-level``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[OUTPUT_FLAGS], formatter_class=HelpFormatter, **kwargs
    )
    return parser


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    """How ``demo`` and ``run`` reach an enclave: a local proxy, or ``--remote``."""
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="the session's wire: stream (default, or $FARSIDE_TRANSPORT), or gRPC "
        "where only HTTP/2 passes between client and proxy (docs/performance.md)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="give up when the provision server or the proxy has not answered, the "
        "enclave loaded and attested within this many seconds",
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
        help="a trusted machine's platform.pub: its evidence is accepted (repeatable); "
        "a remote enclave needs it",
    )
    group.add_argument(
        "--trust-any-platform",
        action="store_true",
        help="accept evidence signed by any platform (development only; logged loudly)",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def config_words(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The flags a TOML ``--config`` file stands for, to go before the command line's own.

    Each key is the name of one of ``parser``'s flags without its dashes; a value is a
    string or number (``port = 4321``), a boolean for a switch (``insecure = true``),
    or a list for a repeatable flag. Anything else, and any other key, is a
    ``CommandError`` naming the file and the key. Given before the command line's own
    flags, the file's settings are overridden by them.
    """
    import difflib
    import tomllib

    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise CommandError(f"cannot read --config {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"--config {path!r} is not valid TOML: {exc}") from None
    actions = {
        option[2:]: action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in ("--help", "--config")
    }
    words: list[str] = []
    for key, value in table.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(key, actions, n=1)
            also = f" (did you mean {close[0]!r}?)" if close else ""
            raise CommandError(
                f"--config {path!r}: unknown setting {key!r}{also}; the settings are this "
                "command's flags without their dashes"
            )
        words += _setting_words(path, key, value, action)
    return words


def _setting_words(path: str, key: str, value: Any, action: argparse.Action) -> list[str]:
    flag = f"--{key}"
    where = f"--config {path!r}: {key}"
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise CommandError(f"{where} is a switch: true or false, not {value!r}")
        return [flag] if value else []
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not isinstance(action, argparse._AppendAction):
        raise CommandError(f"{where} takes one value, not a list")
    words = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise CommandError(f"{where} must be a string or a number, not {item!r}")
        text = str(item)
        if action.choices is not None and text not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise CommandError(f"{where} is one of {choices}, not {text!r}")
        if callable(action.type):
            try:
                action.type(text)
            except argparse.ArgumentTypeError as exc:
                raise CommandError(f"{where}: {exc}") from None
            except ValueError:
                kind = getattr(action.type, "__name__", "")
                raise CommandError(f"{where}: invalid {kind} value {text!r}") from None
        words += [flag, text]
    return words


# ----------------------------------------------------------------------------- output


def configure_logging(args: argparse.Namespace, *, server: bool, name: str) -> None:
    """Logging for this command, and gRPC's own logging kept out of it.

    Servers log from ``info`` with a timestamp on every line; other commands log
    warnings only. gRPC's C core writes its own lines to stderr (handshake failures
    among them, which farside reports in its own words), so they are silenced unless
    the level is ``debug``; its settings must be in the environment before gRPC is
    imported, which the commands do lazily, after this. An explicit
    ``$GRPC_VERBOSITY`` is kept.
    """
    verbose = getattr(args, "verbose", 0) or 0
    level = getattr(args, "log_level", None) or (
        "debug" if verbose >= 2 else "info" if verbose or server else "warning"
    )
    os.environ.setdefault("GRPC_VERBOSITY", "DEBUG" if level == "debug" else "NONE")
    if server or level == "debug":
        from farside._logging import configure_logging as configure_daemon_logging

        fmt = getattr(args, "log_format", None) or "text"
        configure_daemon_logging(level, fmt, name=name)  # timestamped, text or JSON
        return
    logging.basicConfig(  # a client's warnings: one line each, as the logger words them
        level=getattr(logging, level.upper()), stream=sys.stderr, format="%(message)s"
    )


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2))


# Where the user is in the CLI, the fix is a flag: what each setting an error names
# (farside.EnclaveError.setting) is called here.
_FLAG_HINTS = {
    "policy.platform_keys": "give that machine's platform.pub with --platform-key FILE",
    "tls.ca": "--tls-ca FILE must be the CA bundle that signed the server's certificate",
    "tls.cert": "--tls-cert FILE and --tls-key FILE must be a client certificate the server "
    "accepts (signed by its --client-ca) and that certificate's key",
    "token": "give the server's token with --token-file FILE",
    "timeout": "is that the provision server's address? --connect-timeout SECONDS waits longer",
}


def _flag_hint(exc: Any, args: argparse.Namespace) -> str | None:
    setting = getattr(exc, "setting", None)
    if setting == "tls":
        if getattr(args, "tls_ca", None) or getattr(args, "tls_cert", None):
            return "leave out the --tls-* flags, or start the server with --tls-cert and --tls-key"
        return "give --tls-ca FILE (and --tls-cert FILE --tls-key FILE if it requires mTLS)"
    if setting == "tls.cert" and not getattr(args, "tls_cert", None):
        return "give a client certificate and its key: --tls-cert FILE --tls-key FILE"
    if setting == "address":
        return "check the address (HOST:PORT), and that the provision server runs there"
    hint = _FLAG_HINTS.get(setting or "")
    return hint if hint is not None else getattr(exc, "hint", None)


def describe_error(exc: BaseException, args: argparse.Namespace) -> list[str]:
    """The lines that tell the user about ``exc``: one, or more with ``-v``.

    farside's errors say their cause and the flag that fixes it where one does; the
    remote traceback of an enclave's exception, and a load error's further lines,
    only with ``-v``.
    """
    from farside import EnclaveCallError, EnclaveError

    verbose = bool(getattr(args, "verbose", 0))
    if isinstance(exc, EnclaveCallError):
        named = exc.remote_type and exc.remote_type not in (
            "farside.EnclaveError",
            "farside._errors.EnclaveError",
        )
        text = f"{exc.remote_type}: {exc.message}" if named else exc.message
        extra = exc.remote_traceback
    elif isinstance(exc, EnclaveError):
        hint = _flag_hint(exc, args)
        text = f"{exc.message}: {hint}" if hint else exc.message
        extra = None
    elif isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
        extra = None
    else:
        text = str(exc) or type(exc).__name__
        extra = None
    first, _, rest = text.partition("\n")
    lines = [first]
    if verbose:
        if rest.strip():
            lines.append(rest.rstrip())
        if extra:
            lines.append("Remote traceback:\n" + extra.rstrip())
    elif rest.strip() or extra:
        lines[0] += " (-v for details)"
    return lines


# ----------------------------------------------------------------------------- inputs


def parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_call_args(words: Sequence[str], *, strict: bool) -> tuple[list[Any], list[str]]:
    """The values of ``farside run``'s ARGs, and notes on how words were read.

    Strict: each word is JSON (``"42"`` is a string, ``42`` a number) or an error.
    Otherwise a word that is valid JSON is read as JSON and any other as a string,
    and each word read as something other than a string earns a note, so that
    ``42`` turning into a number is never silent.
    """
    values: list[Any] = []
    notes: list[str] = []
    for number, word in enumerate(words, 1):
        try:
            value = json.loads(word)
        except json.JSONDecodeError as exc:
            if strict:
                raise CommandError(
                    f"argument {number} ({word!r}) is not JSON: {exc.msg} "
                    f"(a string is written '\"{word}\"' under --json-args)"
                ) from None
            value = word
        if not strict and not isinstance(value, str):
            kind = "None" if value is None else type(value).__name__
            quoted = json.dumps(word) if len(word) <= 24 else '"..."'
            notes.append(
                f"argument {number} ({word}) is read as JSON and passed as {kind}; for the "
                f"string, write it as a JSON string ('{quoted}'); --json-args says every ARG "
                "is JSON"
            )
        values.append(value)
    return values, notes


def read_secret(path: str, flag: str = "--token-file") -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CommandError(f"cannot read {flag} {path!r}: {exc.strerror}") from None
    if not token:
        raise CommandError(f"{flag} {path!r} is empty")
    return token


def _read_text(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CommandError(f"cannot read {flag} {path!r}: {exc.strerror}") from None


def check_tls_files(
    *,
    cert: tuple[str, str | None] = ("--tls-cert", None),
    key: tuple[str, str | None] = ("--tls-key", None),
    cas: Sequence[tuple[str, str | None]] = (),
) -> None:
    """Check the TLS files a command was given before gRPC sees them.

    gRPC reports an unusable certificate only as a failed handshake (or a failed
    bind, on a server) and a dozen lines of its own; this names the flag and the file.
    Each argument is (flag, path or None).
    """
    import ssl

    (cert_flag, cert_path), (key_flag, key_path) = cert, key
    if bool(cert_path) != bool(key_path):
        given, missing = (cert_flag, key_flag) if cert_path else (key_flag, cert_flag)
        raise CommandError(f"{given} needs {missing} too: a certificate and its key")
    for flag, path in cas:
        if path and "-----BEGIN CERTIFICATE-----" not in _read_text(path, flag):
            raise CommandError(f"{flag} {path!r} holds no PEM certificate")
    if not (cert_path and key_path):
        return
    cert_text, key_text = _read_text(cert_path, cert_flag), _read_text(key_path, key_flag)
    swapped = f"(are {cert_flag} and {key_flag} swapped?)"
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        if "PRIVATE KEY-----" in cert_text:
            raise CommandError(f"{cert_flag} {cert_path!r} is a private key {swapped}")
        raise CommandError(f"{cert_flag} {cert_path!r} holds no PEM certificate")
    if "PRIVATE KEY-----" not in key_text:
        if "-----BEGIN CERTIFICATE-----" in key_text:
            raise CommandError(f"{key_flag} {key_path!r} is a certificate {swapped}")
        raise CommandError(f"{key_flag} {key_path!r} holds no PEM private key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_path, key_path)
    except ssl.SSLError:
        raise CommandError(
            f"{key_flag} {key_path!r} is not the key of the certificate in {cert_flag} "
            f"{cert_path!r}"
        ) from None


def client_tls(args: argparse.Namespace) -> TLSConfig | None:
    from farside import TLSConfig

    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    check_tls_files(
        cert=("--tls-cert", args.tls_cert),
        key=("--tls-key", args.tls_key),
        cas=[("--tls-ca", args.tls_ca)],
    )
    return TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


def provisioner(args: argparse.Namespace) -> Provisioner:
    from farside import LocalProvision, RemoteProvision

    if not args.remote:
        if args.tls_ca or args.tls_cert or args.tls_key or args.token_file:
            raise CommandError("--tls-ca, --tls-cert, --tls-key and --token-file need --remote")
        return LocalProvision(transport=args.transport)
    token = read_secret(args.token_file) if args.token_file else None
    return RemoteProvision(
        args.remote,
        tls=client_tls(args),
        token=token,
        transport=args.transport,
        node_label=getattr(args, "node_label", None),
    )


def policy(args: argparse.Namespace, *, debug: bool) -> AttestationPolicy | None:
    from farside import AttestationPolicy

    if not (args.platform_key or args.trust_any_platform):
        return None  # the default: exactly this bundle, on a platform the provisioner vouches for
    for path in args.platform_key or ():
        _read_text(path, "--platform-key")
    return AttestationPolicy(
        platform_keys=tuple(args.platform_key or ()),
        allow_debug=debug,
        trust_any_platform=args.trust_any_platform,
    )


def add_metrics_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--metrics-address``: serve Prometheus' ``/metrics`` (docs/operations.md)."""
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help=f"serve Prometheus metrics ({what}) on http://HOST:PORT/metrics (port 0 picks "
        "one); unauthenticated plaintext HTTP, so keep it on loopback or a monitoring "
        "network (docs/operations.md). Default: no metrics",
    )
