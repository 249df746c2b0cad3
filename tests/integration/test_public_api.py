"""``farside.__all__`` is exactly the public API the package exports."""

from __future__ import annotations

import types

import farside
import farside.trusted


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_every_name_in_all_exists() -> None:
    missing = [name for name in farside.__all__ if not hasattr(farside, name)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(farside.__all__) == len(set(farside.__all__))


def test_no_public_attribute_is_missing_from_all() -> None:
    assert public_names(farside) == set(farside.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from farside import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(farside.__all__)


def test_design_names_are_public() -> None:
    design = {
        "load",
        "EnclaveManager",
        "EnclaveClient",
        "EnclaveLoadConfig",
        "RemoteLoadConfig",
        "RemoteProxyClientConfig",
        "SimLoadConfig",
        "EnclaveConfig",
        "LocalProvision",
        "StatusCode",
        "EnclaveError",
        "EnclaveLoadError",
        "AttestationError",
        "EnclaveCallError",
        "EnclaveUnavailableError",
        "DeadlineExceededError",
        "ProtocolError",
    }
    assert design <= set(farside.__all__)


def test_error_hierarchy() -> None:
    for error in (
        farside.EnclaveLoadError,
        farside.EnclaveCallError,
        farside.EnclaveUnavailableError,
        farside.DeadlineExceededError,
        farside.ProtocolError,
    ):
        assert issubclass(error, farside.EnclaveError)
    assert issubclass(farside.AttestationError, farside.EnclaveLoadError)
    assert issubclass(farside.HostCallError, farside.EnclaveCallError)
    assert issubclass(farside.ClientClosedError, RuntimeError)
    assert issubclass(farside.EnclaveNameError, ValueError)


def test_trusted_all_is_exact() -> None:
    assert public_names(farside.trusted) == set(farside.trusted.__all__)
    assert all(hasattr(farside.trusted, name) for name in farside.trusted.__all__)
