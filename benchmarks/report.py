"""Write the results of ``python -m benchmarks``: Markdown table, JSON, latency chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"# farside benchmarks ({'quick' if meta['quick'] else 'full'} run"
        f"{', TLS' if meta['tls'] else ''})",
        "",
        f"{meta['date']} · Python {meta['python']} · {meta['cpus']} CPUs · "
        f"grpcio {meta['grpcio']} · payload {meta['payload_bytes']} bytes · "
        f"{meta['calls']} timed calls after {meta['warmup']} warm-up",
        "",
        "| | Measurement | Median | p99 | n / unit |",
        "|---|---|---:|---:|---|",
    ]
    for r in report["rows"]:
        if "median_us" in r:
            lines.append(
                f"| {r['section']} | {r['name']} | {_fmt(r['median_us'])} µs | "
                f"{_fmt(r['p99_us'])} µs | n={r['n']} |"
            )
        else:
            lines.append(f"| {r['section']} | {r['name']} | {_fmt(r['value'])} | | {r['unit']} |")
    lines += [
        "",
        "| Ratio | Measured | Target | Met |",
        "|---|---:|---|---|",
    ]
    for ratio in report["ratios"]:
        measured = "n/a" if ratio["value"] is None else f"{ratio['value']:.3g}"
        met = {True: "yes", False: "no", None: "n/a"}[ratio["met"]]
        lines.append(f"| {ratio['name']} | {measured} | {ratio['target']} | {met} |")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "median_us" in r]
    names = [r["name"] for r in rows]
    medians = [r["median_us"] for r in rows]
    p99s = [r["p99_us"] for r in rows]
    colors = ["tab:red" if r["name"].startswith("farside") else "tab:blue" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    positions = list(range(len(rows)))[::-1]
    ax.barh(positions, medians, color=colors, label="median")
    ax.scatter(p99s, positions, color="black", marker="|", s=200, label="p99", zorder=3)
    ax.set_yticks(positions, names, fontsize=8)
    ax.set_xlabel("round trip (µs)")
    ax.set_title(f"Round-trip latency, {report['meta']['payload_bytes']}-byte payload, loopback")
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
    chart(report, paths["png"])
    return paths
