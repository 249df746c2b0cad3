"""Which attester a proxy uses: ``farside proxy --attester``, and a provision server's choice.

``make_attester`` turns the flags into an ``Attester`` (or a usage error naming the
flag); a provision server passes its ``--attester`` to every proxy and, on
hardware, starts no platform agent and refuses a platform key. The sessions
themselves are tests/integration/test_hardware_session.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from farside.attestation.hardware import HardwareAttester, tsm
from farside.cli import build_parser
from farside.provision.server import ProvisionServerConfig
from farside.proxy.server import make_attester

from ._fake_tee import FakeTee


def test_sim_is_the_default_and_keeps_the_agent() -> None:
    args = build_parser().parse_args(["proxy", "--listen", "unix:/x"])
    assert (args.attester, args.tsm_root, args.nsm_device) == ("sim", None, None)
    assert make_attester("sim") is None  # no agent: a throwaway key, as before


@pytest.mark.parametrize(
    ("kind", "options", "needle"),
    [
        ("tpm", {}, "one of sim, tsm, nsm"),
        ("tsm", {"agent_fd": 3}, "--agent-fd is the sim attester's channel"),
        ("nsm", {"agent_fd": 3}, "--agent-fd is the sim attester's channel"),
        ("sim", {"tsm_root": "/x"}, "go with --attester tsm or nsm"),
        ("tsm", {"nsm_device": "/x"}, "--nsm-device with --attester nsm"),
        ("nsm", {"tsm_root": "/x"}, "--tsm-root goes with --attester tsm"),
    ],
)
def test_flags_that_do_not_go_together_are_refused(
    kind: str, options: dict[str, object], needle: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        make_attester(kind, **options)  # type: ignore[arg-type]


def test_a_machine_without_the_tee_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--attester tsm: configfs-tsm: cannot create"):
        make_attester("tsm", tsm_root=str(tmp_path / "no-configfs"))
    with pytest.raises(ValueError, match=r"--attester nsm: there is no NSM at"):
        make_attester("nsm", nsm_device=str(tmp_path / "no-nsm"))


def test_tsm_asks_the_tee_what_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tee = FakeTee.make("sev-snp")
    monkeypatch.setattr(tsm, "_OsFileSystem", tee.kernel)
    attester = make_attester("tsm", tsm_root=str(tmp_path))
    assert isinstance(attester, HardwareAttester)
    assert attester.format == "sev-snp"
    attester.close()


def test_the_proxy_command_says_what_is_wrong_and_exits_2(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "farside",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            str(token),
            "--sandbox",
            "off",
            "--attester",
            "tsm",
            "--tsm-root",
            str(tmp_path / "no-configfs"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "farside proxy: --attester tsm: configfs-tsm: cannot create a report entry" in (
        result.stderr
    )


def test_a_provision_server_passes_its_attester_to_each_proxy(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["provision-server", "--attester", "tsm", "--tsm-root", "/run/tsm"]
    )
    assert (args.attester, args.tsm_root) == ("tsm", "/run/tsm")
    config = ProvisionServerConfig(proxy_attester="tsm", proxy_tsm_root="/run/tsm")
    assert config.attester_args == ("--attester", "tsm", "--tsm-root", "/run/tsm")
    assert ProvisionServerConfig(proxy_attester="nsm").attester_args == ("--attester", "nsm")
    assert ProvisionServerConfig().attester_args == ()


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"proxy_attester": "tsm", "platform_dir": Path("/p")}, "do not give --platform-dir"),
        ({"proxy_attester": "nsm", "ray_address": "head:6379"}, "fleet mode"),
        ({"proxy_tsm_root": "/x"}, "--tsm-root goes with --attester tsm"),
        ({"proxy_attester": "tsm", "proxy_nsm_device": "/x"}, "--nsm-device with"),
        ({"proxy_attester": "sgx"}, "one of sim, tsm, nsm"),
    ],
)
def test_a_provision_server_refuses_what_does_not_fit_hardware(
    settings: dict[str, object], needle: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        ProvisionServerConfig(**settings)  # type: ignore[arg-type]
