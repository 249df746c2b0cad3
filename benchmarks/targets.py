"""The performance targets (issue 16): each a ratio of two rows, or one row against a bound.

``for_transport`` computes them for one farside transport from one run's rows. The
targets are stated for the default transport; the harness computes them for both,
so that each transport's standing is visible, and says which one is the default.
The baselines are the ones on farside's own wire (``family``): a Unix socket for
local sessions, TCP loopback for sessions over TLS. Timings are reported, never
asserted: a target not met is a finding, not a failure.
"""

from __future__ import annotations

from typing import Any

from ._rows import FAMILY_NAMES, Row, metric

BIG = 64 << 20
Ratio = dict[str, Any]


def _ratio(
    transport: str,
    default: bool,
    ident: str,
    name: str,
    value: float | None,
    op: str,
    bound: float,
    unit: str = "",
    *,
    moonshot: bool = False,
    vs: str = "",
) -> Ratio:
    met = None if value is None else (value <= bound if op == "≤" else value >= bound)
    if bound >= 1000:
        shown = f"{bound:,.0f}"
    elif bound < 10 and bound == int(bound):
        shown = f"{bound:.1f}"  # "≤ 4.0", as the issue writes it
    else:
        shown = f"{bound:g}"
    return {
        "key": f"{transport}.{ident}",
        "transport": transport,
        "default": default,
        "name": name,
        "value": value,
        "target": f"{op} {shown}{' ' + unit if unit else ''}" + (" (moonshot)" if moonshot else ""),
        "op": op,
        "bound": bound,
        "moonshot": moonshot,
        "met": met,
        "vs": vs,
    }


def _divide(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def for_transport(rows: list[Row], transport: str, *, default: bool, family: str) -> list[Ratio]:
    """The targets for farside on ``transport``, against the baselines on ``family``."""
    by_key = {r["key"]: r for r in rows}

    def get(key: str) -> float | None:
        return metric(by_key[key]) if key in by_key else None

    def name_of(key: str) -> str:
        return str(by_key[key]["name"]) if key in by_key else ""

    me = f"farside.{transport}"
    where = FAMILY_NAMES[family]
    grpc_keys = [k for k in (f"grpc.sync.{family}", f"grpc.aio.{family}") if k in by_key]
    grpc_best = min(grpc_keys, key=lambda k: metric(by_key[k])) if grpc_keys else ""
    empty, nested = get(f"{me}.empty"), get(f"{me}.nested")
    one, sixteen = get(f"{me}.calls_s.1"), get(f"{me}.calls_s.16")
    cold = get(f"{me}.cold_load")
    aio_empty = get(f"{me}.aio.empty")
    loop, empties = get(f"{me}.print_loop"), get(f"{me}.print_empties")

    def ratio(ident: str, name: str, value: float | None, *bound: Any, **kw: Any) -> Ratio:
        return _ratio(transport, default, ident, name, value, *bound, **kw)

    socket_key = f"socket.pingpong.{family}"
    empty_socket = _divide(empty, get(socket_key))
    empty_grpc = _divide(empty, get(grpc_best) if grpc_best else None)
    grpc_name = f"empty call / raw gRPC bidi ping-pong (faster of sync and aio client, {where})"
    socket_name = f"empty call / raw socket ping-pong ({where})"
    ratios = [
        ratio("empty/socket", socket_name, empty_socket, "≤", 4.0),
        ratio(
            "empty/socket/moonshot",
            socket_name,
            empty_socket,
            "≤",
            2.0,
            moonshot=True,
        ),
        ratio("empty/grpc", grpc_name, empty_grpc, "≤", 1.0, vs=name_of(grpc_best)),
    ]
    if transport == "grpc":
        ratios.append(
            ratio("empty/grpc/transport", grpc_name, empty_grpc, "≤", 1.5, vs=name_of(grpc_best))
        )
    ratios += [
        ratio(
            "nested/rpyc",
            f"nested call / rpyc callback, bound method cached ({where})",
            _divide(nested, get(f"rpyc.nested.{family}")),
            "≤",
            0.8,
        ),
        ratio(
            "nested/pyro5",
            f"nested call / Pyro5 callback, best serializer ({where})",
            _divide(nested, get(f"pyro5.nested.{family}")),
            "≤",
            0.8,
        ),
        ratio(
            "echo64/socket",
            f"64 MiB echo / raw socket streaming of the same bytes ({where})",
            _divide(get(f"{me}.echo.{BIG}"), get(f"socket.stream.{family}.{BIG}")),
            "≥",
            0.5,
        ),
        ratio(
            "echo64/grpc",
            f"64 MiB echo / raw gRPC streaming of the same bytes ({where})",
            _divide(get(f"{me}.echo.{BIG}"), get(f"grpc.stream.{family}.{BIG}")),
            "≥",
            1.0,
        ),
        ratio("threads", "16-thread / 1-thread empty calls/s", _divide(sixteen, one), "≥", 2.0),
        ratio(
            "threads/moonshot",
            "empty calls/s into one enclave, 16 threads",
            sixteen,
            "≥",
            10_000,
            "calls/s",
            moonshot=True,
        ),
        ratio(
            "cold_load",
            "cold load -> first result (LocalProvision)",
            None if cold is None else cold / 1e3,
            "≤",
            0.3,
            "s",
        ),
        ratio("idle_rss", "idle proxy RSS", get(f"{me}.idle_rss"), "≤", 60, "MiB"),
        ratio(
            "aio/sync",
            "farside.aio: one task's empty call / the sync client's (issue 17)",
            _divide(aio_empty, empty),
            "≤",
            1.0,
        ),
        ratio(
            "print_loop",
            "10,000-line print loop / 10,000 empty calls (issue 6)",
            _divide(loop, empties),
            "≤",
            0.05,
        ),
    ]
    return ratios
