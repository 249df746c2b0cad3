"""Output: the enclave's stdout/stderr reach the client's, completely and in order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import farside


def test_print_reaches_client_stdout(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert worker.call("say", "hello from inside") == "said"
    captured = capsys.readouterr()
    assert captured.out == "hello from inside\n"
    assert captured.err == ""


def test_stderr_reaches_client_stderr(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    worker.call("say", "to stdout", "to stderr")
    captured = capsys.readouterr()
    assert captured.out == "to stdout\n"
    assert captured.err == "to stderr\n"


def test_output_reaches_the_file_descriptors_too(
    worker: farside.EnclaveClient, capfd: pytest.CaptureFixture[str]
) -> None:
    worker.call("say", "fd out", "fd err")
    captured = capfd.readouterr()
    assert captured.out == "fd out\n"
    assert captured.err == "fd err\n"


def test_unicode_output(worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]) -> None:
    text = "ünïcødé ✓ 🎉 — 中文"
    worker.call("say", text)
    assert capsys.readouterr().out == text + "\n"


def test_all_output_arrives_before_the_call_returns(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    for round_ in range(20):
        worker.call("print_lines", 3, f"round{round_}")
        out = capsys.readouterr().out  # read right away: nothing may still be in flight
        assert out == "".join(f"round{round_} {i}\n" for i in range(3))


def test_output_of_a_failing_call_arrives_before_its_error(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    worker.call("say", "before")
    with pytest.raises(farside.EnclaveCallError):
        worker.call("fail", "after output")
    assert capsys.readouterr().out == "before\n"


def test_ten_thousand_lines_in_one_call(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    count = 10_000
    assert worker.call("print_lines", count, "bulk") == count
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == count
    assert lines == [f"bulk {i}" for i in range(count)]


def test_output_and_exit_calls_keep_their_order(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output written before a host.call is on the client's stdout when the handler runs."""
    seen: list[str] = []
    worker.register_exit_handler("peek", lambda: seen.append(capsys.readouterr().out))
    worker.call("say", "written first")
    worker.call("call_host", "peek")
    assert seen == ["written first\n"]


def test_concurrent_calls_output_is_complete(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(index: int) -> Any:
        return worker.call("print_lines", 200, f"thread{index}")

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(run, range(4))) == [200] * 4
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 800
    for index in range(4):
        mine = [line for line in lines if line.startswith(f"thread{index} ")]
        assert mine == [f"thread{index} {i}" for i in range(200)], "one thread's lines reordered"


@pytest.mark.slow
def test_two_hundred_thousand_lines_in_one_call(
    worker: farside.EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    count = 200_000
    assert worker.call("print_lines", count, "many") == count
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"many {i}" for i in range(count)]
