"""The layering docs/architecture.md draws holds: what each import loads, and how.

``lint-imports`` (pyproject.toml's contracts, run by .ci/run) checks the layer order
statically; these tests check what a user sees at run time, and the rules the
contracts cannot express: no cycles, no reaching into another package's private
modules, and every lazily exported name resolving to what type checkers see.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "farside"


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "module",
    [
        "farside.protocol",
        "farside.trusted",
        "farside.transport.sockets",
        "farside.transport.stream",
        "farside.transport.aio.stream",
        "farside.transport.vsock",
        "farside.transport.relay",
        "farside.transport.endpoint",
        "farside.attestation.bundle",
        "farside.attestation.evidence",
    ],
)
def test_low_layers_do_not_load_grpc(module: str) -> None:
    loaded = loaded_by(f"import {module}")
    assert module in loaded
    assert "grpc" not in loaded
    assert not {m for m in loaded if m.startswith(("farside.provision", "farside.untrusted"))}


@pytest.mark.parametrize(
    "statement",
    [
        "import farside.protocol",
        "import farside.trusted.runtime",
        "import farside.metrics, farside.metrics.report, farside.metrics.aggregate",
        "import farside.tracing",
        "import farside.untrusted._session",
        "import farside.proxy.server",
        "import farside.provision.server",
    ],
)
def test_metrics_and_tracing_load_nothing_until_asked(statement: str) -> None:
    loaded = loaded_by(statement)
    assert not {m for m in loaded if m.startswith(("prometheus_client", "opentelemetry"))}


def test_the_protocol_core_loads_no_cryptography() -> None:
    loaded = loaded_by("import farside.protocol")
    assert "farside.protocol._core" in loaded
    assert not {m for m in loaded if m.startswith("cryptography")}


def test_import_farside_loads_only_the_lazy_table() -> None:
    farside_modules = {m for m in loaded_by("import farside") if m.startswith("farside")}
    assert farside_modules == {"farside", "farside._lazy"}


def test_a_name_loads_its_module_on_first_use() -> None:
    loaded = loaded_by("import farside\nfarside.EnclaveError")
    assert "farside._errors" in loaded
    assert "farside.untrusted" not in loaded
    assert "grpc" not in loaded


def test_the_cli_parser_loads_no_grpc() -> None:
    loaded = loaded_by("import farside.cli\nfarside.cli.build_parser()")
    assert "grpc" not in loaded
    assert "farside.untrusted._session" not in loaded


# ----------------------------------------------------------------- static rules


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(module: str, *, top_level_only: bool) -> set[str]:
    """The farside modules ``module`` imports (at its top level only, if asked)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = []
    if top_level_only:
        pending: list[ast.stmt] = list(tree.body)
        while pending:
            node = pending.pop()
            if isinstance(node, ast.If) and not is_type_checking(node):
                pending += node.body + node.orelse
            elif isinstance(node, ast.Try):
                pending += node.body + node.orelse + node.finalbody
            else:
                nodes.append(node)
    else:
        nodes = [n for n in ast.walk(tree) if not (isinstance(n, ast.If) and is_type_checking(n))]
        skipped = {
            id(child)
            for n in ast.walk(tree)
            if isinstance(n, ast.If) and is_type_checking(n)
            for child in ast.walk(n)
        }
        nodes = [n for n in nodes if id(n) not in skipped]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return {n for n in names if n in MODULES and n != module}


@pytest.mark.parametrize("top_level_only", [True, False], ids=["top level", "also in functions"])
def test_no_import_cycles(top_level_only: bool) -> None:
    # An import inside a function does not fail at import time, but it is still a cycle
    # in the design (the manager and the client used to import each other that way).
    graph = {m: imported(m, top_level_only=top_level_only) for m in MODULES}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append([*trail[trail.index(dep) :], dep] if dep in trail else [module, dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def owner(private: str) -> str:
    """The package whose private module ``private`` is (``farside.proxy`` for ``._landlock``)."""
    parts = private.split(".")
    index = max(i for i, part in enumerate(parts) if part.startswith("_"))
    return ".".join(parts[:index])


def test_no_module_imports_another_packages_private_module() -> None:
    offences = []
    for module in MODULES:
        for dep in imported(module, top_level_only=False):
            if not any(part.startswith("_") for part in dep.split(".")):
                continue
            home = owner(dep)
            if module != home and not module.startswith(home + "."):
                offences.append(f"{module} imports {dep}")
    assert offences == []


PACKAGES = sorted(m for m, p in MODULES.items() if p.name == "__init__.py")


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_exports_match_what_type_checkers_see(package: str) -> None:
    module = importlib.import_module(package)
    table = getattr(module, "_EXPORTS", None)
    if table is None:
        return  # an eager package: its names are plain imports
    tree = ast.parse(MODULES[package].read_text(encoding="utf-8"))
    typed = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.If) and is_type_checking(node)
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert typed == set(table)
    assert set(module.__all__) == set(table)
    for name in table:
        assert getattr(module, name) is not None
    assert set(table) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = module.not_a_name
