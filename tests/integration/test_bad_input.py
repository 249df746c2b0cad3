"""Bad input and misuse: each is a clear error and leaves no process behind."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import farside

from ._support import (
    INIT_RAISES,
    NO_BUILD,
    WORKER,
    RecordingProvision,
    long_form_config,
    process_gone,
    proxy_pid,
    registered,
    wait_until,
)

SYNTAX_ERROR_SOURCE = textwrap.dedent(
    """\
    from farside.trusted import TrustedApplication

    def broken_function(:
        pass
    """
)


def assert_reaped(provision: RecordingProvision) -> None:
    """Every proxy the provisioner started has exited and was waited for."""
    for lease in provision.leases:
        assert lease.handle.process.returncode is not None, "proxy not reaped"
        assert process_gone(lease.handle.process.pid)


# ----------------------------------------------------------------------- loading


def test_missing_enclave_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_enclave.py"
    provision = RecordingProvision()
    with pytest.raises(farside.EnclaveLoadError) as info:
        farside.load(missing, provision=provision, name="missing-file")
    assert str(missing) in str(info.value)
    assert provision.leases == []  # nothing was started for a bundle that is not there
    assert registered("missing-file") is None


def test_directory_without_init_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(farside.EnclaveLoadError, match="__init__"):
        farside.load(tmp_path)


def test_non_python_file_is_a_load_error(tmp_path: Path) -> None:
    bundle = tmp_path / "enclave.txt"
    bundle.write_text("not python", encoding="utf-8")
    with pytest.raises(farside.EnclaveLoadError, match=r"enclave\.txt"):
        farside.load(bundle)


@pytest.fixture
def syntax_error_bundle(tmp_path: Path) -> Path:
    path = tmp_path / "syntax_error_enclave.py"
    path.write_text(SYNTAX_ERROR_SOURCE, encoding="utf-8")
    return path


def test_syntax_error_shows_the_offending_line_for_debug_enclaves(
    syntax_error_bundle: Path,
) -> None:
    provision = RecordingProvision()
    with pytest.raises(farside.EnclaveLoadError) as info:
        farside.load(syntax_error_bundle, provision=provision, name="syntax-error")
    message = str(info.value)
    assert "SyntaxError" in message
    assert "line 3" in message
    assert "def broken_function(:" in message
    assert str(syntax_error_bundle) in message
    assert registered("syntax-error") is None
    assert len(provision.leases) == 1
    assert_reaped(provision)


def test_syntax_error_of_non_debug_enclave_hides_the_source(syntax_error_bundle: Path) -> None:
    with pytest.raises(farside.EnclaveLoadError) as info:
        farside.load(syntax_error_bundle, debug=False)
    assert "SyntaxError" in str(info.value)
    assert "def broken_function(:" not in str(info.value)


def test_bundle_without_build_trusted_application() -> None:
    provision = RecordingProvision()
    with pytest.raises(farside.EnclaveLoadError, match="build_trusted_application"):
        farside.load(NO_BUILD, provision=provision)
    assert_reaped(provision)


def test_initialize_raising_is_a_load_error_and_leaves_no_proxy() -> None:
    provision = RecordingProvision()
    started = time.monotonic()
    with pytest.raises(farside.EnclaveLoadError) as info:
        farside.load(INIT_RAISES, provision=provision, name="init-raises")
    assert "initialize" in str(info.value)
    assert "the sealing key is unavailable (initialize-raises fixture)" in str(info.value)
    assert registered("init-raises") is None
    assert len(provision.leases) == 1
    assert_reaped(provision)
    assert time.monotonic() - started < 10


def test_initialize_raising_via_config_long_form() -> None:
    manager = farside.EnclaveManager.instance()
    provision = RecordingProvision()
    config = long_form_config(
        WORKER,
        "init-fails-long",
        provision=provision,
        config=farside.EnclaveConfig(user={"fail_initialize": "by request"}),
    )
    with pytest.raises(farside.EnclaveLoadError, match="initialize refused: by request"):
        manager.load_enclave(config)
    with pytest.raises(farside.EnclaveNameError):
        manager.get_client("init-fails-long")
    assert_reaped(provision)
    # The name is free again.
    ok = long_form_config(WORKER, "init-fails-long")
    client = manager.load_enclave(ok)
    manager.destroy_enclave(client)


# ----------------------------------------------------------------------- calls


def test_unknown_entry_point(worker: farside.EnclaveClient) -> None:
    with pytest.raises(farside.EnclaveCallError) as info:
        worker.call("no_such_entry_point", 1)
    assert info.value.code == farside.StatusCode.NOT_FOUND
    assert "no_such_entry_point" in str(info.value)
    assert worker.call("echo", "ok") == {"args": ["ok"], "kwargs": {}}


@pytest.mark.parametrize(
    "name", ["initialize", "finalize", "_opener", "__init__", "__class__", "config_user"]
)
def test_methods_without_ecall_cannot_be_called(worker: farside.EnclaveClient, name: str) -> None:
    with pytest.raises(farside.EnclaveCallError) as info:
        worker.call(name)
    assert info.value.code == farside.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        ((object(),), {}, "args[0]"),
        ((1, {"k": [2, {3}]}), {}, "args[1]['k'][1]"),
        ((), {"key": {1.5: "float key"}}, "kwargs['key'][1.5]"),
        ((b"ok", Path("x")), {}, "args[1]"),
    ],
)
def test_unsupported_value_is_a_type_error_before_sending(
    worker: farside.EnclaveClient, args: tuple[object, ...], kwargs: dict[str, object], path: str
) -> None:
    before = worker.enter_and_run("count")["runs"]
    with pytest.raises(TypeError) as info:
        worker.call("echo", *args, **kwargs)
    assert f" at {path}:" in str(info.value)
    with pytest.raises(TypeError):
        worker.enter_and_run({"bad": object()})
    # Nothing reached the enclave: run() ran exactly once more, for this call.
    assert worker.enter_and_run("count")["runs"] == before + 1
    assert worker.call("echo", "still usable") == {"args": ["still usable"], "kwargs": {}}


def test_unsupported_result_is_an_enclave_call_error(worker: farside.EnclaveClient) -> None:
    with pytest.raises(farside.EnclaveCallError) as info:
        worker.call("bad_result")
    assert info.value.remote_type == "TypeError"
    assert info.value.code == farside.StatusCode.INVALID_ARGUMENT
    assert worker.call("echo", 1) == {"args": [1], "kwargs": {}}


def test_unsupported_handler_result_is_a_host_call_error_inside(
    worker: farside.EnclaveClient,
) -> None:
    worker.register_exit_handler("returns_object", object)
    caught = worker.call("call_host_catch", "returns_object")
    assert caught["caught"] == "HostCallError"
    assert caught["remote_type"] == "TypeError"


def test_call_needs_a_name(worker: farside.EnclaveClient) -> None:
    with pytest.raises(ValueError, match="name"):
        worker.call("")


def test_non_positive_timeout_is_refused(worker: farside.EnclaveClient) -> None:
    with pytest.raises(ValueError, match="timeout"):
        worker.call("echo", timeout=0)


@pytest.mark.parametrize("name", ["", "farside.fs.open", "farside.anything"])
def test_reserved_or_empty_exit_handler_names_are_refused(
    worker: farside.EnclaveClient, name: str
) -> None:
    with pytest.raises(ValueError, match="exit handler"):
        worker.register_exit_handler(name, print)


def test_exit_handler_must_be_callable(worker: farside.EnclaveClient) -> None:
    with pytest.raises(TypeError, match="callable"):
        worker.register_exit_handler("not_callable", 42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- names and lifetime


def test_second_load_under_a_name_in_use() -> None:
    provision = RecordingProvision()
    with farside.load(WORKER, name="taken") as first:
        with pytest.raises(farside.EnclaveNameError) as info:
            farside.load(WORKER, name="taken", provision=provision)
        assert isinstance(info.value, ValueError)
        assert "taken" in str(info.value)
        assert provision.leases == []
        assert farside.EnclaveManager.instance().get_client("taken") is first
        assert first.call("echo", 1) == {"args": [1], "kwargs": {}}


def test_get_client_of_an_unknown_name() -> None:
    with pytest.raises(farside.EnclaveNameError) as info:
        farside.EnclaveManager.instance().get_client("never-loaded")
    assert isinstance(info.value, ValueError)
    assert "never-loaded" in str(info.value)


def test_call_on_a_destroyed_client() -> None:
    manager = farside.EnclaveManager.instance()
    client = farside.load(WORKER)
    pid = proxy_pid(client)
    manager.destroy_enclave(client)
    assert client.closed
    assert process_gone(pid)
    for attempt in (
        lambda: client.call("echo", 1),
        lambda: client.enter_and_run(None),
    ):
        with pytest.raises(farside.ClientClosedError) as info:
            attempt()
        assert isinstance(info.value, RuntimeError)
        assert client.name in str(info.value)
    with pytest.raises(farside.EnclaveNameError):
        manager.get_client(client.name)


def test_destroy_twice_is_a_no_op() -> None:
    manager = farside.EnclaveManager.instance()
    client = farside.load(WORKER)
    manager.destroy_enclave(client)
    manager.destroy_enclave(client)
    manager.destroy_enclave(client, final_input="raise", skip_finalize=False)
    with client:
        pass  # leaving the block destroys it once more: still nothing
    assert client.closed


def test_destroy_with_final_input_reaches_finalize() -> None:
    manager = farside.EnclaveManager.instance()
    seen: list[object] = []
    client = farside.load(WORKER, exit_handlers={"finalized": seen.append})
    manager.destroy_enclave(client, final_input="notify")
    assert seen == ["notify"]


def test_skip_finalize() -> None:
    manager = farside.EnclaveManager.instance()
    seen: list[object] = []
    client = farside.load(WORKER, exit_handlers={"finalized": seen.append})
    manager.destroy_enclave(client, final_input="notify", skip_finalize=True)
    assert seen == []
    assert client.closed


def test_finalize_raising_is_reported_and_everything_is_released() -> None:
    manager = farside.EnclaveManager.instance()
    client = farside.load(WORKER)
    pid = proxy_pid(client)
    with pytest.raises(farside.EnclaveCallError, match="finalize was asked to raise"):
        manager.destroy_enclave(client, final_input="raise")
    assert client.closed
    assert registered(client.name) is None
    assert process_gone(pid)


def use_enclave_then(action: Callable[[farside.EnclaveClient], object]) -> farside.EnclaveClient:
    """Run ``action`` inside ``with farside.load(...)``; record the client for the caller."""
    used: list[farside.EnclaveClient] = []
    try:
        with farside.load(WORKER) as enclave:
            used.append(enclave)
            action(enclave)
    finally:
        LAST_USED[:] = used
    return enclave


LAST_USED: list[farside.EnclaveClient] = []


def divide_by_zero(enclave: farside.EnclaveClient) -> None:
    _ = 1 / 0


def arm_then_raise(enclave: farside.EnclaveClient) -> None:
    enclave.call("arm_finalize_failure")
    raise KeyError("from the block")


def kill_then_raise(enclave: farside.EnclaveClient) -> None:
    pid = proxy_pid(enclave)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: process_gone(pid), 5)
    raise KeyError("after the kill")


def test_exception_in_with_block_is_not_masked() -> None:
    with pytest.raises(ZeroDivisionError):
        use_enclave_then(divide_by_zero)
    (enclave,) = LAST_USED
    assert enclave.closed
    assert process_gone(proxy_pid(enclave))


def test_exception_in_with_block_is_not_masked_by_failing_finalize() -> None:
    with pytest.raises(KeyError, match="from the block"):
        use_enclave_then(arm_then_raise)
    (enclave,) = LAST_USED
    assert enclave.closed
    assert registered(enclave.name) is None


def test_failing_finalize_raises_when_the_block_did_not() -> None:
    with pytest.raises(farside.EnclaveCallError, match="finalize was asked to raise"):
        use_enclave_then(lambda enclave: enclave.call("arm_finalize_failure"))
    (enclave,) = LAST_USED
    assert enclave.closed
    assert registered(enclave.name) is None


def test_exception_in_with_block_is_not_masked_when_the_proxy_died() -> None:
    with pytest.raises(KeyError, match="after the kill"):
        use_enclave_then(kill_then_raise)
    (enclave,) = LAST_USED
    assert enclave.closed
    assert process_gone(proxy_pid(enclave))


def test_large_values_round_trip(worker: farside.EnclaveClient) -> None:
    data = os.urandom(10 * 2**20)
    assert worker.call("echo", data) == {"args": [data], "kwargs": {}}


def test_value_over_the_size_limit_is_refused_before_sending(
    worker: farside.EnclaveClient,
) -> None:
    before = worker.enter_and_run("count")["runs"]
    with pytest.raises(ValueError, match="limit"):
        worker.enter_and_run(b"x" * (257 * 2**20))
    assert worker.enter_and_run("count")["runs"] == before + 1
