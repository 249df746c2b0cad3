"""The ``farside`` command's surface: what issue 15 found missing (items 8-12).

``run``'s arguments, files root and exit handlers; ``--version``, ``-v`` and
``--log-level``; ``provision-server --config``; the help (defaults, one metavar style,
descriptions); labelled output and ``--json`` for the key and bundle commands.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from farside.cli import build_parser

ENCLAVES = Path(__file__).resolve().parent.parent / "enclaves"
WORKER = ENCLAVES / "worker.py"


def farside(
    *args: str | Path, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farside", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


# ----------------------------------------------------------------------- run, item 8


def test_a_number_argument_is_passed_as_a_number_and_said_so(tmp_path: Path) -> None:
    done = farside("run", WORKER, "--call", "echo", "42", "hello", '"7"', cwd=tmp_path)
    assert json.loads(ok(done)) == {"args": [42, "hello", "7"], "kwargs": {}}
    notes = done.stderr.splitlines()
    assert len(notes) == 1
    assert notes[0].startswith("farside run: note: argument 1 (42) is read as JSON and passed")
    assert "as int" in notes[0]
    assert "'\"42\"'" in notes[0]
    assert "--json-args" in notes[0]


def test_json_args_are_strict_and_quiet(tmp_path: Path) -> None:
    done = farside("run", WORKER, "--call", "echo", "--json-args", "42", '"42"', cwd=tmp_path)
    assert json.loads(ok(done)) == {"args": [42, "42"], "kwargs": {}}
    assert done.stderr == ""
    bare = farside("run", WORKER, "--call", "echo", "--json-args", "hello", cwd=tmp_path)
    assert bare.returncode == 1
    assert "argument 1 ('hello') is not JSON" in bare.stderr
    assert "Traceback" not in bare.stderr


def test_files_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "in.txt").write_text("from the root")
    (tmp_path / "in.txt").write_text("from the working directory")
    done = farside("run", WORKER, "--call", "read_file", "in.txt", cwd=tmp_path)
    assert json.loads(ok(done)) == "from the working directory"
    done = farside(
        "run", WORKER, "--files-root", root, "--call", "read_file", "in.txt", cwd=tmp_path
    )
    assert json.loads(ok(done)) == "from the root"
    missing = farside("run", WORKER, "--files-root", tmp_path / "nope", "--call", "ident")
    assert missing.returncode == 1
    assert "--files-root" in missing.stderr


def test_exit_handler_from_a_module(tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    done = farside(
        "run",
        WORKER,
        "--exit-handler",
        "shout=handlers:shout",
        "--call",
        "call_host",
        "shout",
        "hi",
        cwd=tmp_path,
    )
    assert json.loads(ok(done)) == "HI!"


def test_a_missing_exit_handler_says_how_to_register_one(tmp_path: Path) -> None:
    done = farside("run", WORKER, "--call", "call_host", "audit", "x", cwd=tmp_path)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "no exit handler is registered for 'audit'" in line
    assert "exit_handlers=" in line
    assert "register_exit_handler('audit'" in line
    assert "--exit-handler audit=MODULE:FUNCTION" in line


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("audit", "NAME=MODULE:FUNCTION"),
        ("audit=nowhere_module:f", "cannot import nowhere_module"),
        ("audit=json:no_such_function", "json has no no_such_function"),
        ("audit=json:__doc__", "is not callable"),
    ],
)
def test_bad_exit_handler_specs(spec: str, needle: str, tmp_path: Path) -> None:
    done = farside("run", WORKER, "--exit-handler", spec, "--call", "ident", cwd=tmp_path)
    assert done.returncode == 1
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


# -------------------------------------------------------- version and verbosity, item 9


def test_version() -> None:
    import farside as package

    assert ok(farside("--version")) == f"farside {package.__version__}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "measure", str(WORKER)],
        ["measure", "-v", str(WORKER)],
        ["--log-level", "debug", "measure", str(WORKER)],
        ["measure", str(WORKER), "--log-level", "error"],
        ["-vv", "measure", str(WORKER)],
    ],
)
def test_verbosity_flags_go_before_or_after_the_command(args: list[str]) -> None:
    assert "measurement:" in ok(farside(*args))


def test_an_unknown_log_level_is_a_usage_error() -> None:
    done = farside("--log-level", "loud", "measure", WORKER)
    assert done.returncode == 2
    assert "invalid choice: 'loud'" in done.stderr


# ------------------------------------------------------------------ the help, item 10


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found = [("farside", build_parser())]
    for _, parser in found:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [(f"{parser.prog} {name}", p) for name, p in action.choices.items()]
    return found


def test_every_option_that_takes_a_value_names_it_in_one_style() -> None:
    """FILE, DIR, SECONDS, N, HOST:PORT ...: never argparse's TLS_CERT from the flag name."""
    for prog, parser in _parsers():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._VersionAction | argparse._HelpAction):
                continue
            assert action.metavar is not None or action.choices is not None, (
                f"{prog} {action.option_strings[0]} has no metavar"
            )
            if action.metavar is not None:
                assert re.fullmatch(
                    r"([a-z]+:)?[A-Z0-9:=_-]+(\.[a-z]+)?|\{.*\}", str(action.metavar)
                ), f"{prog} {action.option_strings[0]}: {action.metavar}"


def test_every_command_and_group_has_a_description() -> None:
    for prog, parser in _parsers():
        assert parser.description, f"{prog} has no description"


def test_provision_server_help_shows_its_defaults() -> None:
    text = " ".join(ok(farside("provision-server", "--help")).split())
    for needle in (
        "address to listen on (default: 127.0.0.1)",
        "(default: 4321)",
        "(default: 16)",
        "a proxy exits if its client does not connect in time (default: 30.0)",
        "the longest a request waits for a free slot (default: 30.0)",
        "--config FILE",
        "--tls-cert FILE",
    ):
        assert needle in text, needle
    assert "TLS_CERT" not in text


def test_demo_help_names_enclave_path_with_dashes_first() -> None:
    text = ok(farside("demo", "--help"))
    assert "--enclave-path PATH, --enclave_path PATH" in text
    assert "DEMO_ENCLAVE" in text


# ------------------------------------------------------- provision-server --config


def _serve(args: list[str | Path], cwd: Path) -> tuple[str, str]:
    """Start ``provision-server ARGS``; return its ready line and stderr once stopped."""
    process = subprocess.Popen(
        [sys.executable, "-m", "farside", "provision-server", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else ""
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    return line, err


def test_config_file_sets_every_flag_and_the_command_line_wins(tmp_path: Path) -> None:
    assert farside("platform", "init", "--dir", tmp_path / "platform").returncode == 0
    config = tmp_path / "server.toml"
    config.write_text(
        "\n".join(
            [
                'host = "127.0.0.1"',
                "port = 1",  # overridden below: the command line wins
                f'platform-dir = "{tmp_path / "platform"}"',
                "max-enclaves = 2",
                "proxy-idle-timeout = 5.5",
                'sandbox = "off"',
                "insecure = false",
                'log-level = "info"',
            ]
        )
    )
    line, err = _serve(["--config", config, "--port", "0"], tmp_path)
    match = re.fullmatch(r"farside provision-server listening on 127\.0\.0\.1:(\d+)\n", line)
    assert match, (line, err)
    assert int(match.group(1)) not in (1, 4321)
    assert "no --platform-dir" not in err  # the file's platform-dir was taken


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("prot = 4321", "unknown setting 'prot' (did you mean 'port'?)"),
        ("tls_cert = 'x'", "unknown setting 'tls_cert' (did you mean 'tls-cert'?)"),
        ("port = 'many'", "port: invalid int value"),
        ("insecure = 'yes'", "insecure is a switch: true or false"),
        ("sandbox = 'lax'", "sandbox is one of"),
        ("port = [1, 2]", "port takes one value, not a list"),
        ("port =", "is not valid TOML"),
    ],
)
def test_config_file_mistakes_name_the_key(text: str, needle: str, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(text + "\n")
    done = farside("provision-server", "--config", config)
    assert done.returncode == 2
    assert needle in done.stderr
    assert str(config) in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_config_file() -> None:
    done = farside("provision-server", "--config", "/nonexistent/server.toml")
    assert done.returncode == 2
    assert "cannot read --config '/nonexistent/server.toml'" in done.stderr


# ----------------------------------------------- labelled output and --json, item 12


def test_build_keygen_sign_measure_label_every_line_and_speak_json(tmp_path: Path) -> None:
    built = ok(farside("build", WORKER, "--out", "w.fsb", cwd=tmp_path)).splitlines()
    assert built[0] == "wrote w.fsb"
    assert built[1].startswith("bundle: worker ")
    assert re.fullmatch(r"measurement: [0-9a-f]{64}", built[2])
    measurement = built[2].removeprefix("measurement: ")

    made = ok(farside("keygen", "--out", "k.key", cwd=tmp_path)).splitlines()
    assert made[0] == "wrote k.key (0600) and k.pub"
    assert re.fullmatch(r"signer: [0-9a-f]{64}", made[1])
    signer = made[1].removeprefix("signer: ")

    signed = ok(farside("sign", "w.fsb", "--key", "k.key", cwd=tmp_path)).splitlines()
    assert signed[0] == "signed w.fsb"
    assert signed[-2:] == [f"measurement: {measurement}", f"signer: {signer}"]
    measured = ok(farside("measure", "w.fsb", cwd=tmp_path)).splitlines()
    assert measured[1:] == [f"signer: {signer}", f"measurement: {measurement}"]
    for lines in (built, made, signed, measured):
        for line in lines:
            assert re.match(r"(wrote|signed|bundle:|measurement:|signer:) ", line), line

    as_json = {
        "build": json.loads(ok(farside("build", WORKER, "--out", "v.fsb", "--json", cwd=tmp_path))),
        "keygen": json.loads(ok(farside("keygen", "--out", "j.key", "--json", cwd=tmp_path))),
        "sign": json.loads(ok(farside("sign", "w.fsb", "--key", "k.key", "--json", cwd=tmp_path))),
        "measure": json.loads(ok(farside("measure", "w.fsb", "--json", cwd=tmp_path))),
    }
    assert as_json["build"]["measurement"] == measurement
    assert as_json["build"]["archive"] == "v.fsb"
    assert set(as_json["keygen"]) == {"key", "public_key", "signer"}
    assert as_json["sign"]["signer"] == signer
    assert as_json["measure"]["signer"] == signer
    assert as_json["measure"]["measurement"] == measurement
    assert as_json["measure"]["name"] == "worker"


def test_a_relative_workdir_serves(tmp_path: Path) -> None:
    """Proxies start in directories of their own: the server makes --workdir absolute (a
    relative one made every mTLS proxy fail to start: its client CA file was not found)."""
    assert farside("platform", "init", "--dir", "platform", cwd=tmp_path).returncode == 0
    assert farside("certs", "--out", "tls", "--host", "127.0.0.1", cwd=tmp_path).returncode == 0
    (tmp_path / "work").mkdir()
    flags = ["--tls-cert", "tls/server.pem", "--tls-key", "tls/server.key"]
    flags += ["--client-ca", "tls/ca.pem", "--workdir", "work", "--platform-dir", "platform"]
    process = subprocess.Popen(
        [sys.executable, "-m", "farside", "provision-server", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else ""
        address = line.rsplit(" ", 1)[-1].strip()
        assert address, line
        done = farside(
            "demo",
            "--remote",
            address,
            *("--tls-ca", "tls/ca.pem", "--tls-cert", "tls/client.pem"),
            *("--tls-key", "tls/client.key", "--platform-key", "platform/platform.pub"),
            *("--message", "relative"),
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "Decrypted inside the enclave: relative"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
