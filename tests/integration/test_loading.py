"""Loading enclaves: the long form, the short form, names, measurement, package bundles."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import farside

from ._support import PACKAGE, QUICKSTART, WORKER, long_form_config, proxy_pid, registered


def measure(path: Path, *extra: str) -> str:
    """``farside measure PATH``'s measurement (its last line, 'measurement: HEX')."""
    done = subprocess.run(
        [sys.executable, "-m", "farside", "measure", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1].removeprefix("measurement: ")


def test_quickstart_long_form(capsys: pytest.CaptureFixture[str]) -> None:
    manager = farside.EnclaveManager.instance()
    assert farside.EnclaveManager.instance() is manager
    proxy_config = farside.RemoteProxyClientConfig.defaults_with_provision(farside.LocalProvision())
    load_config = farside.EnclaveLoadConfig(
        name="quickstart_long_form",
        config=farside.EnclaveConfig(),
        remote_load_config=farside.RemoteLoadConfig(
            proxy_config=proxy_config,
            sim_load_config=farside.SimLoadConfig(enclave_path=QUICKSTART, debug=True),
        ),
    )
    client = manager.load_enclave(load_config)
    try:
        assert manager.get_client("quickstart_long_form") is client
        assert client.name == "quickstart_long_form"
        assert not client.closed
        sealed = client.enter_and_run({"message": "Asylo Rocks"})
        assert isinstance(sealed, str)
        bytes.fromhex(sealed)
        assert capsys.readouterr().out == f"Encrypted message:\n{sealed}\n"
        assert client.call("decrypt", sealed) == "Asylo Rocks"
        pid = proxy_pid(client)
    finally:
        manager.destroy_enclave(client, final_input=None, skip_finalize=False)
    assert client.closed
    assert registered("quickstart_long_form") is None
    assert client._lease.handle.process.returncode is not None, f"proxy {pid} was not reaped"


def test_quickstart_short_form(capsys: pytest.CaptureFixture[str]) -> None:
    with farside.load(QUICKSTART) as enclave:
        assert isinstance(enclave, farside.EnclaveClient)
        assert not enclave.closed
        sealed = enclave.call("encrypt", "Asylo Rocks")
        assert enclave.call("decrypt", sealed) == "Asylo Rocks"
        name = enclave.name
        assert registered(name) is enclave
    assert enclave.closed
    assert registered(name) is None
    out = capsys.readouterr().out
    assert out == f"Encrypted message:\n{sealed}\n"


def test_ciphertexts_differ_and_only_the_same_enclave_decrypts() -> None:
    with farside.load(QUICKSTART) as one, farside.load(QUICKSTART) as two:
        a = one.call("encrypt", "same")
        b = one.call("encrypt", "same")
        assert a != b  # fresh nonce per message
        with pytest.raises(farside.EnclaveCallError) as info:
            two.call("decrypt", a)  # its key never left enclave one
        assert info.value.remote_type.endswith("InvalidTag")


def test_measurement_matches_farside_measure() -> None:
    expected = measure(WORKER)
    with farside.load(WORKER) as enclave:
        assert enclave.measurement == expected
        assert re.fullmatch(r"[0-9a-f]{64}", enclave.measurement)


def test_measurement_of_non_debug_enclave_matches_measure_no_debug() -> None:
    debug, non_debug = measure(QUICKSTART), measure(QUICKSTART, "--no-debug")
    assert debug != non_debug  # the debug flag is measured
    with farside.load(QUICKSTART, debug=False) as enclave:
        assert enclave.measurement == non_debug
        assert enclave.debug is False


def test_package_directory_enclave() -> None:
    with farside.load(PACKAGE) as enclave:
        assert enclave.measurement == measure(PACKAGE)
        assert enclave.enter_and_run(21) == 42
        assert enclave.call("double", "ab") == "abab"
        assert enclave.call("shout", "hi") == "HI!"
        assert enclave.call("module_names") == ["_farside_enclave", "_farside_enclave.helpers"]
        assert enclave.name.startswith("pkg_enclave-")


def test_default_names_are_unique_and_registered() -> None:
    manager = farside.EnclaveManager.instance()
    with farside.load(WORKER) as a, farside.load(WORKER, name=None) as b:
        assert a.name != b.name
        assert a.name.startswith("worker")
        assert manager.get_client(a.name) is a
        assert manager.get_client(b.name) is b
        assert proxy_pid(a) != proxy_pid(b)  # one proxy per enclave
        assert a.call("pid") == proxy_pid(a)
        assert b.call("pid") == proxy_pid(b)


def test_explicit_name_and_config_reach_the_enclave() -> None:
    config = farside.EnclaveConfig(environment={"FARSIDE_T": "1"}, user={"k": [1, 2, b"x"]})
    with farside.load(WORKER, name="explicitly-named", config=config) as enclave:
        assert enclave.name == "explicitly-named"
        assert registered("explicitly-named") is enclave
        assert enclave.call("config") == {"k": [1, 2, b"x"]}


def test_enter_and_run_input_round_trip() -> None:
    value = {"s": "é", "b": b"\x00\xff", "i": 2**70, "f": 1.5, "t": (1, [2, None]), 3: True}
    with farside.load(WORKER) as enclave:
        assert enclave.enter_and_run(value) == {"ran": value, "runs": 1}
        assert enclave.enter_and_run() == {"ran": None, "runs": 2}


def test_long_form_with_exit_handlers_and_destroy_with_final_input() -> None:
    manager = farside.EnclaveManager.instance()
    seen = []
    config = long_form_config(
        WORKER,
        "long-form-handlers",
        exit_handlers={"record": lambda x: seen.append(x) or len(seen)},
    )
    client = manager.load_enclave(config)
    try:
        assert client.call("call_host", "record", "a") == 1
        assert seen == ["a"]
    finally:
        manager.destroy_enclave(client, final_input="fine")
    assert client.closed


def test_repr_does_not_crash() -> None:
    with farside.load(WORKER) as enclave:
        assert enclave.name in repr(enclave)
    assert "destroyed" in repr(enclave)
