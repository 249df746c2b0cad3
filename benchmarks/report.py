"""Write the results of ``python -m benchmarks``: Markdown, JSON, latency chart.

One run's result is ``{"meta", "how", "rows", "ratios", "skipped"}``. Several runs
are folded by ``aggregate`` into the same shape, where each row and ratio carries
the median of the runs, their range and (ratios) how many runs met the target,
and ``"runs"`` keeps every run as it was.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ._rows import metric

RESULTS = Path(__file__).with_name("results")
DASH = "\N{EN DASH}"  # ranges: 1.9-2.4 reads as a subtraction


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _unit(r: dict[str, Any]) -> str:
    return "µs" if "median_us" in r else str(r["unit"])


# ---------------------------------------------------------------- several runs


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold runs into medians and ranges per row and per ratio (matched by ``key``)."""
    first = results[0]
    rows = []
    for r in first["rows"]:
        same = [x for result in results for x in result["rows"] if x["key"] == r["key"]]
        values = [metric(x) for x in same]
        folded = {k: r[k] for k in ("section", "key", "name") if k in r}
        folded.update(
            unit=_unit(r),
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            values=values,
        )
        if "median_us" in r:  # the chart draws these
            folded["median_us"] = folded["median"]
            folded["p99_us"] = statistics.median(x["p99_us"] for x in same)
        rows.append(folded)
    ratios = []
    for ratio in first["ratios"]:
        same = [x for result in results for x in result["ratios"] if x["key"] == ratio["key"]]
        values = [x["value"] for x in same if x["value"] is not None]
        folded = {k: v for k, v in ratio.items() if k not in ("value", "met", "vs")}
        folded.update(
            value=statistics.median(values) if values else None,
            min=min(values) if values else None,
            max=max(values) if values else None,
            values=[x["value"] for x in same],
            met_runs=sum(1 for x in same if x["met"]),
            measured_runs=len(values),
            vs=sorted({x["vs"] for x in same if x["vs"]}),
        )
        ratios.append(folded)
    meta = dict(first["meta"])
    meta["runs"] = len(results)
    meta["seconds"] = round(sum(result["meta"]["seconds"] for result in results), 1)
    meta["pyro5"] = [result["meta"].get("pyro5") for result in results]
    return {
        "meta": meta,
        "how": first["how"],
        "rows": rows,
        "ratios": ratios,
        "skipped": sorted({s for result in results for s in result["skipped"]}),
        "runs": results,
    }


# ---------------------------------------------------------------- Markdown


def _header(report: dict[str, Any]) -> list[str]:
    meta = report["meta"]
    runs = meta.get("runs", 1)
    kind = "quick" if meta["quick"] else "full"
    title = f"# farside benchmarks ({kind} run{'s' if runs > 1 else ''}"
    title += f", {runs} runs" if runs > 1 else ""
    title += ", TLS)" if meta["tls"] else ")"
    versions = " · ".join(
        f"{name} {meta[k]}"
        for name, k in (("grpcio", "grpcio"), ("rpyc", "rpyc_version"), ("Pyro5", "pyro5_version"))
        if meta.get(k)
    )
    return [
        title,
        "",
        f"{meta['date']} · Python {meta['python']} · {meta['cpus']} CPUs · {versions} · "
        f"payload {meta['payload_bytes']} bytes · {meta['calls']} timed calls after "
        f"{meta['warmup']} warm-up per latency row · {meta['seconds']} s"
        + (" in all" if runs > 1 else ""),
        "",
        _load_line(report),
        "",
        f"Default transport: **{meta['default_transport']}** ({meta['default_source']}). "
        f"Every baseline in the targets runs on farside's own wire here: "
        f"**{meta['family_name']}**.",
        "",
    ]


def _load_line(report: dict[str, Any]) -> str:
    runs = report.get("runs", [report])
    loads = [x for run in runs for x in run["meta"].get("loadavg", [])]
    if not loads:
        return ""
    return (
        f"1-minute load average at the start and end of each run: {min(loads):.1f} to "
        f"{max(loads):.1f} on {report['meta']['cpus']} CPUs (other processes share the "
        "machine; their load skews every figure)."
    )


def _targets(report: dict[str, Any]) -> list[str]:
    runs = report["meta"].get("runs", 1)
    if runs > 1:
        lines = [
            f"| Transport | Target ratio | Median of {runs} runs (range) | Target | Met in |",
            "|---|---|---:|---|---|",
        ]
    else:
        lines = ["| Transport | Target ratio | Measured | Target | Met |", "|---|---|---:|---|---|"]
    for ratio in report["ratios"]:
        transport = ratio["transport"] + (" (default)" if ratio["default"] else "")
        if runs > 1:
            measured = _fmt_ratio(ratio["value"])
            if ratio["value"] is not None:
                measured += f" ({_fmt_ratio(ratio['min'])}{DASH}{_fmt_ratio(ratio['max'])})"
            met = f"{ratio['met_runs']} of {runs}"
        else:
            measured = _fmt_ratio(ratio["value"])
            met = {True: "yes", False: "no", None: "n/a"}[ratio["met"]]
        lines.append(f"| {transport} | {ratio['name']} | {measured} | {ratio['target']} | {met} |")
    return lines


def _measurements(report: dict[str, Any]) -> list[str]:
    runs = report["meta"].get("runs", 1)
    if runs > 1:
        lines = [
            f"| | Measurement | Median of {runs} runs | Range | Unit |",
            "|---|---|---:|---:|---|",
        ]
        for r in report["rows"]:
            lines.append(
                f"| {r['section']} | {r['name']} | {_fmt(r['median'])} | "
                f"{_fmt(r['min'])}{DASH}{_fmt(r['max'])} | {r['unit']} |"
            )
        return lines
    lines = ["| | Measurement | Median | p99 | n / unit |", "|---|---|---:|---:|---|"]
    for r in report["rows"]:
        if "median_us" in r:
            lines.append(
                f"| {r['section']} | {r['name']} | {_fmt(r['median_us'])} µs | "
                f"{_fmt(r['p99_us'])} µs | n={r['n']} |"
            )
        else:
            lines.append(f"| {r['section']} | {r['name']} | {_fmt(r['value'])} | | {r['unit']} |")
    return lines


def _pyro5_line(pyro5: Any) -> str:
    picks = pyro5 if isinstance(pyro5, list) else [pyro5]
    shown = []
    for pick in picks:
        if not pick:
            continue
        probe = ", ".join(f"{s} {us:.0f} µs" for s, us in pick["probe_us"].items())
        shown.append(f"{pick['serializer']} ({probe})")
    if not shown:
        return ""
    which = "per run" if len(shown) > 1 else "this run"
    return (
        f"Pyro5 serializer S, the fastest callback call in a short probe ({which}; "
        f"probe medians in brackets): " + "; ".join(shown) + "."
    )


def markdown(report: dict[str, Any]) -> str:
    lines = _header(report)
    lines += ["## Targets", "", *_targets(report), ""]
    lines += ["## Measurements", "", *_measurements(report), ""]
    lines += ["## How each peer is called", ""]
    lines += [f"* **{peer}**: {how}" for peer, how in report["how"].items()]
    pyro5 = _pyro5_line(report["meta"].get("pyro5"))
    if pyro5:
        lines += ["", pyro5]
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- chart and files


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "median_us" in r]
    names = [r["name"] for r in rows]
    medians = [r["median_us"] for r in rows]
    p99s = [r["p99_us"] for r in rows]
    colors = ["tab:red" if r["key"].startswith("farside") else "tab:blue" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    positions = list(range(len(rows)))[::-1]
    ax.barh(positions, medians, color=colors, label="median")
    ax.scatter(p99s, positions, color="black", marker="|", s=200, label="p99", zorder=3)
    ax.set_yticks(positions, names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("round trip (µs, log scale)")
    runs = report["meta"].get("runs", 1)
    title = f"Round-trip latency, {report['meta']['payload_bytes']}-byte payload, loopback"
    ax.set_title(title + (f" (medians of {runs} runs)" if runs > 1 else ""))
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report: dict[str, Any], directory: Path = RESULTS) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": directory / "latest.md",
        "json": directory / "latest.json",
        "png": directory / "latency.png",
    }
    paths["md"].write_text(markdown(report), encoding="utf-8")
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if importlib.util.find_spec("matplotlib") is None:  # the chart is the bench extra's
        print("benchmarks: no matplotlib, no chart (pip install -e '.[bench]')", file=sys.stderr)
        del paths["png"]
    else:
        chart(report, paths["png"])
    return paths
