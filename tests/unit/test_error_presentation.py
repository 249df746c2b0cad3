"""How farside's errors read: ``farside.X`` everywhere, each name said once, a fix named.

Issue 15, item 7 (names) and item 6 (a fix in the terms of where the user is).
"""

from __future__ import annotations

import subprocess
import sys
import traceback

import pytest

import farside
from farside._errors import EnclaveCallError, EnclaveError, HostCallError
from farside.protocol import RemoteError

PUBLIC_ERRORS = [
    name
    for name in farside.__all__
    if isinstance(getattr(farside, name), type)
    and issubclass(getattr(farside, name), Exception | farside.StatusCode)
]


@pytest.mark.parametrize("name", PUBLIC_ERRORS)
def test_public_errors_read_as_farside_dot_name(name: str) -> None:
    kind = getattr(farside, name)
    assert kind.__module__ == "farside"
    assert f"{kind.__module__}.{kind.__qualname__}" == f"farside.{name}"


def test_the_error_list_is_the_whole_tree() -> None:
    assert set(PUBLIC_ERRORS) >= {
        "EnclaveError",
        "EnclaveLoadError",
        "AttestationError",
        "EnclaveCallError",
        "HostCallError",
        "EnclaveUnavailableError",
        "UnsealError",
        "DeadlineExceededError",
        "ProtocolError",
        "ClientClosedError",
        "EnclaveNameError",
        "StatusCode",
    }


def test_a_traceback_names_farside_dot_error_once() -> None:
    try:
        raise farside.EnclaveLoadError("the bundle is missing")
    except farside.EnclaveLoadError as exc:
        last = traceback.format_exception(exc)[-1]
    assert last == "farside.EnclaveLoadError: the bundle is missing\n"
    assert "_errors" not in last


def test_an_uncaught_error_in_a_script_reads_farside_dot_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import farside; raise farside.EnclaveUnavailableError('gone')"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.stderr.splitlines()[-1] == "farside.EnclaveUnavailableError: gone"


def test_a_remote_farside_error_is_named_farside_dot_error() -> None:
    error = RemoteError.from_exception(EnclaveError("nope"))
    assert error.type == "farside.EnclaveError"


def test_the_generic_remote_error_name_is_not_repeated() -> None:
    """An unknown entry point is farside's own refusal: no second error name, no frames."""
    exc = EnclaveCallError(
        "the enclave has no entry point named 'x'", remote_type="farside.EnclaveError"
    )
    assert str(exc) == "the enclave has no entry point named 'x'"
    last = traceback.format_exception(exc)[-1]
    assert last == "farside.EnclaveCallError: the enclave has no entry point named 'x'\n"


def test_other_remote_types_are_named() -> None:
    assert str(EnclaveCallError("bad", remote_type="ValueError")) == "ValueError: bad"
    assert str(HostCallError("x", remote_type="farside.UnsealError")) == "farside.UnsealError: x"


def test_a_remote_traceback_leaves_out_farsides_own_frames() -> None:
    """Frames inside the farside package say nothing about the peer's code."""
    try:
        exec(compile("raise ValueError('user code')", "<enclave demo>/demo.py", "exec"))
    except ValueError as exc:
        error = RemoteError.from_exception(exc, debug=True)
    assert '"<enclave demo>/demo.py", line 1' in error.traceback
    assert error.traceback.endswith("ValueError: user code\n")
    assert "farside/" not in error.traceback.replace('"<enclave', "")


def test_a_remote_traceback_of_only_farside_frames_is_empty() -> None:
    try:
        farside.no_such_name  # noqa: B018 (raises inside farside/_lazy.py)
    except AttributeError as exc:
        exc.__traceback__ = exc.__traceback__ and exc.__traceback__.tb_next  # farside's only
        error = RemoteError.from_exception(exc, debug=True)
    assert error.traceback == ""


def test_hint_and_setting() -> None:
    plain = EnclaveError("broken")
    assert (str(plain), plain.hint, plain.setting) == ("broken", None, None)
    hinted = farside.EnclaveLoadError(
        "the server refused", hint="give TLSConfig(cert=...)", setting="tls.cert"
    )
    assert str(hinted) == "the server refused: give TLSConfig(cert=...)"
    assert hinted.message == "the server refused"
    assert (hinted.hint, hinted.setting) == ("give TLSConfig(cert=...)", "tls.cert")
