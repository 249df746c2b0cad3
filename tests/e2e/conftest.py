"""The session's wire for the end-to-end tests where it matters.

A test that asks for ``transport`` runs once per transport ("grpc", "stream").
The fixture changes nothing by itself: each test hands the name on explicitly
(``--transport``, ``RemoteProvision(transport=...)``, or ``$FARSIDE_TRANSPORT``
in the environment of the processes it starts, ``_support.environment``), so
tests that do not ask for it run once, on the default wire, and nothing leaks
between tests. Module scope lets module-scoped fixtures (the data service's
sealed dataset) depend on it too.
"""

from __future__ import annotations

import pytest

from farside.transport.factory import TRANSPORTS


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """The wire this test's sessions use: "grpc" or "stream"."""
    return str(request.param)
