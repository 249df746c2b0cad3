"""The sandbox's settings: modes only get stricter, limits only smaller, and the wire keeps both."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import farside
from farside._proto.v1 import session_pb2 as pb
from farside.attestation import Bundle, Manifest
from farside.protocol import BundleReceived, Role, SessionCore
from farside.proxy.sandbox import LAYERS, PRETEND_UNAVAILABLE_ENV, Sandbox, SandboxError, stricter

BUNDLE = Bundle(manifest=Manifest(name="e", entry="e.py"), files={"e.py": b"x = 1\n"})


def open_frames(sandbox: farside.SandboxConfig | None) -> list[pb.Frame]:
    client = SessionCore(Role.CLIENT)
    client.open(BUNDLE, sandbox=sandbox)
    frames = client.frames_to_send()
    return list(pb.Batch.FromString(pb.Batch(frames=frames).SerializeToString()).frames)


@pytest.mark.parametrize(
    "sandbox",
    [
        None,
        farside.SandboxConfig(),
        farside.SandboxConfig(mode="strict", memory=2**31, open_files=64, cpu_seconds=5),
        farside.SandboxConfig(mode="off"),
    ],
)
def test_the_sandbox_request_crosses_the_wire(sandbox: farside.SandboxConfig | None) -> None:
    proxy = SessionCore(Role.PROXY)
    [received] = proxy.receive(open_frames(sandbox))
    assert isinstance(received, BundleReceived)
    assert received.sandbox == sandbox


def test_an_unknown_mode_on_the_wire_is_a_protocol_error() -> None:
    frames = open_frames(farside.SandboxConfig(mode="strict"))
    frames[0].open.sandbox.mode = "lenient"
    proxy = SessionCore(Role.PROXY)
    with pytest.raises(farside.ProtocolError, match="unknown sandbox mode 'lenient'"):
        proxy.receive(frames)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "lenient"}, "mode must be one of off, best-effort, strict"),
        ({"memory": 0}, "memory must be a positive int"),
        ({"open_files": -1}, "open_files must be a positive int"),
        ({"cpu_seconds": 1.5}, "cpu_seconds must be a positive int"),
    ],
)
def test_sandbox_config_refuses_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        farside.SandboxConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mine", "theirs", "result"),
    [
        ("best-effort", None, "best-effort"),
        ("best-effort", "off", "best-effort"),
        ("best-effort", "strict", "strict"),
        ("off", "best-effort", "best-effort"),
        ("strict", "off", "strict"),
        ("off", None, "off"),
    ],
)
def test_a_client_may_ask_for_a_stricter_mode_never_a_weaker_one(
    mine: str, theirs: str | None, result: str
) -> None:
    assert stricter(mine, theirs) == result  # type: ignore[arg-type]


def test_limits_are_the_smaller_of_the_proxys_and_the_clients() -> None:
    proxy = Sandbox(limits=farside.SandboxConfig(memory=2**30, open_files=128))
    request = farside.SandboxConfig(mode="strict", memory=2**32, open_files=64, cpu_seconds=9)
    mode, limits = proxy.effective(request)
    assert mode == "strict"
    assert (limits.memory, limits.open_files, limits.cpu_seconds) == (2**30, 64, 9)
    assert proxy.effective(None) == ("best-effort", proxy.limits)


def test_off_applies_nothing() -> None:
    assert Sandbox(mode="off").confine(None) == ()


@pytest.mark.parametrize("pretend", ["seccomp", "landlock", "rlimits"])
def test_strict_names_each_missing_layer_before_applying_any(
    monkeypatch: pytest.MonkeyPatch, pretend: str
) -> None:
    # Refusing first is what lets this run in the test process: nothing was applied.
    monkeypatch.setenv(PRETEND_UNAVAILABLE_ENV, pretend)
    with pytest.raises(SandboxError, match="strict sandbox cannot apply every layer") as info:
        Sandbox(mode="strict").confine(None)
    named = [layer for layer in LAYERS if f"{layer}: treated as unavailable" in str(info.value)]
    expected = (
        ["landlock-fs", "landlock-net", "landlock-scope"] if pretend == "landlock" else [pretend]
    )
    assert set(expected) <= set(named)


def test_strict_needs_the_network_namespace_only_where_it_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PRETEND_UNAVAILABLE_ENV, "seccomp")
    with pytest.raises(SandboxError, match="netns: unshare refused") as info:
        Sandbox(mode="strict", netns="unshare refused").confine(None)
    assert "seccomp" in str(info.value)


def test_landlock_handles_the_rights_each_abi_knows() -> None:
    from farside.proxy._landlock import FS

    newer = FS.REFER | FS.TRUNCATE | FS.IOCTL_DEV
    assert FS.handled(1) & newer == FS(0)
    assert FS.handled(3) & newer == FS.REFER | FS.TRUNCATE
    assert FS.handled(7) == FS.handled(5) == FS.handled(1) | newer


def test_readable_paths_never_include_root_or_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from farside.proxy.sandbox import _read_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [*sys.path, "/", "", ".", str(tmp_path)])
    paths = _read_paths([str(tmp_path)])
    assert "/" not in paths
    assert str(tmp_path.resolve()) not in paths
    assert os.path.realpath(sys.prefix) in paths
