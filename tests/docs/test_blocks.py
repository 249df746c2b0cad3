"""The harness's own rules: how blocks, markers and the loopback rewriting are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._blocks import DocumentError, parse_document, rewrite, steps

DOC = Path("doc.md")


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_document(DOC, text)


def test_blocks_their_languages_and_lines() -> None:
    document = parse(
        "# t\n\n```sh\nfarside demo\n```\n\n```\noutput\n```\n\n```python\nx = 1\n```\n"
    )
    assert [(b.line, b.language, b.runs) for b in document.blocks] == [
        (3, "sh", True),
        (7, "", False),
        (11, "python", True),
    ]
    assert document.blocks[0].text == "farside demo\n"


def test_a_skip_marker_needs_a_reason_and_a_block() -> None:
    document = parse("<!-- docs-test: skip needs root and a veth pair -->\n\n```sh\nip link\n```\n")
    assert document.blocks[0].skip == "needs root and a veth pair"
    assert not document.blocks[0].runs
    with pytest.raises(DocumentError, match="needs an argument"):
        parse("<!-- docs-test: skip -->\n```sh\nx\n```\n")
    with pytest.raises(DocumentError, match="without a block"):
        parse("text\n<!-- docs-test: skip because -->\n")
    with pytest.raises(DocumentError, match="right before a block"):
        parse("<!-- docs-test: skip because -->\nprose in between\n```sh\nx\n```\n")


def test_unknown_markers_are_refused() -> None:
    with pytest.raises(DocumentError, match="unknown docs-test marker 'maybe'"):
        parse("<!-- docs-test: maybe later -->\n```sh\nx\n```\n")


def test_a_marker_quoted_in_prose_is_prose() -> None:
    document = parse("Write `<!-- docs-test: skip REASON -->` before it.\n\n```sh\nx\n```\n")
    assert document.blocks[0].skip is None


def test_file_and_link_markers() -> None:
    document = parse(
        "<!-- docs-test: link examples tests/vectors -->\n"
        "<!-- docs-test: file /etc/farside/x.toml -->\n```toml\nport = 4321\n```\n"
    )
    assert document.links == ["examples", "tests/vectors"]
    assert document.blocks[0].file == "/etc/farside/x.toml"
    assert document.blocks[0].runs  # written, though toml is not a language that runs


def test_rewriting_is_the_documented_table_and_nothing_else(tmp_path: Path) -> None:
    text = (
        "farside provision-server --host 0.0.0.0 --advertise trusted.example.com --port 4321 "
        "--tls-cert /etc/farside/tls/server.pem --workdir /var/lib/farside "
        "--host 10.0.0.5 # trusted.example.com.au 14321 /usr/etc/farside 10.0.0.55x"
    )
    assert rewrite(text, 5555, tmp_path) == (
        "farside provision-server --host 127.0.0.1 --advertise 127.0.0.1 --port 5555 "
        f"--tls-cert {tmp_path}/etc/farside/tls/server.pem --workdir {tmp_path}/var/lib/farside "
        "--host 127.0.0.5 # 127.0.0.1.au 14321 /usr/etc/farside 10.0.0.55x"
    )


def block(text: str, language: str = "sh"):  # type: ignore[no-untyped-def]
    return parse(f"```{language}\n{text}```\n").blocks[0]


def test_steps_pip_servers_and_variables() -> None:
    text = (
        "pip install -e '.[bench]'\n"
        "pip install . && farside demo --message hi\n"
        "export A=1 B=2 \\\n    C=3\n"
        "SIGNER=$(farside measure x | sed -n 's/^signer: //p')\n"
        "farside provision-server --port 4321 \\\n    --platform-dir p\n"
        "# a comment\n"
        "farside status h:1\n"
    )
    found = steps(block(text), text)
    assert [s.kind for s in found] == ["shell", "server", "shell"]
    assert found[0].command.splitlines()[0] == "farside demo --message hi"
    assert "pip" not in found[0].command
    assert sorted(found[0].assigned) == ["A", "B", "C", "SIGNER"]
    assert found[1].command == "farside provision-server --port 4321 \\\n    --platform-dir p"
    assert found[2].command.endswith("farside status h:1")


def test_a_server_must_name_its_port() -> None:
    text = "farside provision-server --host 0.0.0.0\n"
    with pytest.raises(DocumentError, match="names its --port"):
        steps(block(text), text)
    text = "farside provision-server --config /etc/farside/s.toml\n"
    assert steps(block(text), text)[0].kind == "server"


def test_background_commands_must_be_marked() -> None:
    text = "ip netns exec a farside demo &\n"
    with pytest.raises(DocumentError, match="background"):
        steps(block(text), text)


def test_console_blocks_run_their_dollar_lines_only() -> None:
    text = "$ farside --version\nfarside 0.1.0\n$ farside measure \\\n  x.py\nmeasurement: ab\n"
    found = steps(block(text, "console"), text)
    assert [s.command for s in found] == ["farside --version\nfarside measure \\\n  x.py"]
