"""The comparison table: each figure per peer, and the ratio sse_notify / peer.

:func:`aggregate` folds the runs of one peer and scenario into medians; :func:`render` prints
one Markdown table (plain text that reads as is) over every scenario and peer, with a
``better`` column saying which direction wins, the ratio ``sse_notify / peer`` per peer, and
markers for figures the client (not the server) may have limited. A peer that fell short of N
streams shows what it reached ("9,981 of 18,000"); a scenario that failed shows ``error``.
:func:`render_proxy` prints the ``proxy`` scenario: direct, through nginx, and the difference.
"""

from __future__ import annotations

import math
import statistics
import typing as t
from dataclasses import dataclass

__all__ = ["ROWS", "Row", "aggregate", "common_unicast_rate", "fmt", "render", "render_proxy"]

BASE = "sse_notify"


@dataclass(frozen=True)
class Row:
    scenario: str
    key: str
    label: str
    #: "higher" or "lower" is better, or None (context only, no ratio).
    better: str | None
    unit: str = ""


ROWS: tuple[Row, ...] = (
    Row("idle", "reached", "idle: streams open", None),
    Row("idle", "rss_worker_kib_per_stream", "idle: RSS per stream, serving worker", "lower", "KiB"),
    Row("idle", "rss_all_kib_per_stream", "idle: RSS per stream, all server processes", "lower", "KiB"),
    Row("idle", "rss_redis_kib_per_stream", "idle: ...of which redis-server", "lower", "KiB"),
    Row("idle", "cpu_rest_pct", "idle: server CPU at rest (% of a core)", "lower", "%"),
    Row("connect", "reached", "connect: streams open", None),
    Row("connect", "connect_per_s", "connect: new streams per second", "higher", "/s"),
    Row("connect", "failed", "connect: failed connects", "lower"),
    Row("fanout", "reached", "fanout: streams open", None),
    Row("fanout", "fanout_to_last_ms", "fanout: one broadcast -> last client (median)", "lower", "ms"),
    Row(
        "fanout",
        "sustained_to_last_first_ms",
        "fanout: sustained series, first -> last client",
        "lower",
        "ms",
    ),
    Row("fanout", "sustained_to_last_median_ms", "fanout: sustained series, median", "lower", "ms"),
    Row("fanout", "sustained_to_last_last_ms", "fanout: sustained series, last", "lower", "ms"),
    Row("fanout", "sustained_keeps_up", "fanout: sustained series keeps up", None),
    Row("fanout", "lost", "fanout: deliveries lost (of expected)", "lower"),
    Row("unicast", "reached", "unicast: streams open", None),
    Row("unicast", "unicast_max_per_s", "unicast: max sustained notices/s (1 per POST)", "higher", "/s"),
    Row(
        "unicast",
        "unicast_max_per_s_p99_20ms",
        "unicast: max notices/s (1 per POST) with publish->receive p99 < 20 ms",
        "higher",
        "/s",
    ),
    Row("unicast", "unicast_publish_p99_ms", "unicast: at that rate, publish POST p99", "lower", "ms"),
    Row("unicast", "unicast_recv_p50_ms", "unicast: at that rate, publish->receive p50", "lower", "ms"),
    Row("unicast", "unicast_recv_p99_ms", "unicast: at that rate, publish->receive p99", "lower", "ms"),
    Row("unicast", "unicast_recv_max_ms", "unicast: at that rate, publish->receive max", "lower", "ms"),
    Row("unicast", "common_recv_p99_ms", "unicast: publish->receive p99 at {common}/s", "lower", "ms"),
    Row("unicast", "common_publish_p99_ms", "unicast: publish POST p99 at {common}/s", "lower", "ms"),
    Row(
        "unicast", "unicast_publisher_cpu_pct", "unicast: publisher CPU at max rate (% of a core)", None, "%"
    ),
    Row("unicast", "unicast_lost", "unicast: notices lost", "lower"),
    Row("unicast", "batch_max_per_s", "unicast batched: max sustained notices/s", "higher", "/s"),
    Row("unicast", "batch_recv_p99_ms", "unicast batched: at that rate, publish->receive p99", "lower", "ms"),
    Row(
        "unicast", "batch_10k_achieved_per_s", "unicast batched: achieved at 10,000/s target", "higher", "/s"
    ),
    Row(
        "unicast",
        "batch_10k_recv_p99_ms",
        "unicast batched: at 10,000/s, publish->receive p99",
        "lower",
        "ms",
    ),
    Row(
        "unicast", "batch_10k_publish_p99_ms", "unicast batched: at 10,000/s, publish POST p99", "lower", "ms"
    ),
    Row("unicast", "batch_lost", "unicast batched: notices lost", "lower"),
    Row("churn", "reached", "churn: streams open", None),
    Row("churn", "reconnects_per_s", "churn: reconnects per second", "higher", "/s"),
    Row("churn", "reopened", "churn: streams reopened (of closed)", None),
    Row("churn", "stale_after", "churn: closed streams the server still holds after", "lower"),
    Row("churn", "rss_worker_growth_kib", "churn: serving worker RSS growth", "lower", "KiB"),
    Row("churn", "fds_growth", "churn: server open fds growth", "lower"),
    Row("churn", "fds", "churn: server open fds before -> after", None),
    Row("churn", "churn_lost", "churn: notices lost", "lower"),
)

#: Rows of the client's own CPU (busiest load-generator process, % of a core), per scenario.
CLIENT_KEYS = {
    "idle": "loadgen_cpu_pct",
    "connect": "loadgen_cpu_pct",
    "fanout": "loadgen_cpu_pct",
    "unicast": "unicast_loadgen_cpu_pct",
    "churn": "loadgen_cpu_pct",
}


def _is_number(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def aggregate(runs: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """The median of every numeric figure over ``runs`` (None where no run has one); flags of
    every run, notes of the first."""
    if not runs:
        return {}
    out: dict[str, t.Any] = {}
    keys = [k for k in runs[0] if k not in ("detail", "flags", "notes")]
    for key in keys:
        values = [r.get(key) for r in runs]
        numbers: list[float] = [float(v) for v in values if v is not None and _is_number(v)]
        out[key] = statistics.median(numbers) if numbers else None
        if numbers and all(isinstance(v, int) for v in values if v is not None):
            out[key] = round(out[key])
    flags: dict[str, str] = {}
    for r in runs:
        flags.update(r.get("flags", {}))
    out["flags"] = flags
    out["notes"] = runs[0].get("notes", [])
    out["runs"] = len(runs)
    return out


def common_unicast_rate(results: t.Mapping[str, t.Mapping[str, t.Any]]) -> float | None:
    """The highest single-POST target rate every peer sustained in most of its runs."""
    per_peer: list[dict[float, int]] = []
    runs_of: list[int] = []
    for scenarios in results.values():
        entry = scenarios.get("unicast")
        if not entry or not entry.get("runs"):
            continue
        ok: dict[float, int] = {}
        for run in entry["runs"]:
            for step in run.get("detail", {}).get("single", []):
                if step["ok"]:
                    ok[step["target_per_s"]] = ok.get(step["target_per_s"], 0) + 1
        per_peer.append(ok)
        runs_of.append(len(entry["runs"]))
    if not per_peer:
        return None
    rates = set.intersection(
        *(
            {rate for rate, n in ok.items() if n * 2 > runs}
            for ok, runs in zip(per_peer, runs_of, strict=True)
        )
    )
    return max(rates) if rates else None


def add_common(results: dict[str, dict[str, t.Any]], rate: float | None) -> None:
    """Put each peer's median receive/publish p99 at ``rate`` into its unicast median."""
    for scenarios in results.values():
        entry = scenarios.get("unicast")
        if not entry or not entry.get("median"):
            continue
        recv, post = [], []
        for run in entry["runs"]:
            for step in run.get("detail", {}).get("single", []):
                if rate is not None and step["target_per_s"] == rate:
                    recv.append(step["recv_p99_ms"])
                    post.append(step["publish_p99_ms"])
        entry["median"]["common_rate_per_s"] = rate
        entry["median"]["common_recv_p99_ms"] = statistics.median(recv) if recv else None
        entry["median"]["common_publish_p99_ms"] = statistics.median(post) if post else None


def fmt(value: t.Any, unit: str = "", digits: int | None = None) -> str:
    """A figure for a table: thousands separated, ``n/a`` for none; ``digits`` fixes a float's decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if digits is not None:
            return f"{value:,.{digits}f}"
        if unit in ("ms", "%") or abs(value) < 100:
            return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:,.0f}"
    return str(value)


def _ratio(base: t.Any, other: t.Any) -> str:
    if not (_is_number(base) and _is_number(other)):
        return "-"
    if other == 0:
        return "=" if base == 0 else "inf"
    return f"{base / other:.2f}x"


def _cell(row: Row, figures: t.Mapping[str, t.Any] | None) -> tuple[str, t.Any]:
    """The text of a cell and the value the ratio uses."""
    if figures is None:
        return "n/a", None
    if row.key == "reached":
        reached, asked = figures.get("reached"), figures.get("streams")
        if reached is None:
            return "n/a", None
        text = f"{reached:,}" if asked is None or reached >= asked else f"{reached:,} of {asked:,}"
        return text, reached
    if row.key == "sustained_keeps_up":
        value = figures.get(row.key)
        return ("n/a" if value is None else ("yes" if value else "NO")), None
    if row.key == "lost":
        lost = (figures.get("fanout_lost") or 0) + (figures.get("sustained_lost") or 0)
        expected = (figures.get("sustained_expected") or 0) + (figures.get("fanout_expected") or 0)
        return f"{lost:,} of {expected:,}" if lost else "0", lost
    if row.key == "reopened":
        reopened, churned = figures.get("reopened"), figures.get("churned")
        if reopened is None:
            return "n/a", None
        return (f"{reopened:,}" if reopened == churned else f"{reopened:,} of {churned:,}"), reopened
    if row.key == "fds":
        before, after = figures.get("fds_before"), figures.get("fds_after")
        return (f"{before:,} -> {after:,}" if before is not None else "n/a"), None
    value = figures.get(row.key)
    text = fmt(value, row.unit)
    flag = figures.get("flags", {}).get(row.key)
    if flag and value is not None:
        text += " \u2020"
    return text, value


def render(
    results: t.Mapping[str, t.Mapping[str, t.Any]],
    peers: t.Sequence[str],
    skipped: t.Mapping[str, str],
    streams: int,
    runs: int,
    settings: str = "",
) -> str:
    """The table over every scenario present in ``results`` (``{peer: {scenario: entry}}``), then
    the flagged figures, capped peers, ``settings`` and how each figure is taken."""
    scenarios = {s for p in results.values() for s in p}
    common = None
    for p in results.values():
        entry = p.get("unicast")
        if entry and entry.get("median"):
            common = entry["median"].get("common_rate_per_s")
    others = [p for p in peers if p != BASE]
    head = ["figure", "better", *peers]
    if BASE in peers:
        head += [f"{BASE}/{p}" for p in others]
    lines = [
        f"N = {streams:,} streams, median of {runs} run(s); ratio = {BASE} / peer "
        "(better = higher: a ratio above 1 favours sse_notify; better = lower: below 1 does)",
        *([settings] if settings else []),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    flagged: dict[str, str] = {}
    for row in _ordered_rows():
        if row.scenario not in scenarios:
            continue
        if row.key.startswith("common_") and common is None:
            continue
        label = row.label.replace("{common}", fmt(common) if common is not None else "?")
        if row.unit and row.unit != "%":
            label += f" [{row.unit}]"
        cells: list[str] = []
        values: dict[str, t.Any] = {}
        incomplete: set[str] = set()
        for peer in peers:
            entry = results.get(peer, {}).get(row.scenario)
            if peer in skipped:
                cells.append("skipped")
            elif entry is None:
                cells.append("n/a")
            elif not entry.get("median"):
                cells.append("error" if entry.get("errors") else "n/a")
            else:
                text, value = _cell(row, entry["median"])
                flag = entry["median"].get("flags", {}).get(row.key)
                if flag and value is not None:
                    flagged[f"{peer}, {label}"] = flag
                    if flag.startswith("incomplete"):
                        incomplete.add(peer)
                cells.append(text)
                values[peer] = value
        if all(c in ("n/a", "skipped") for c in cells):
            continue
        ratios = [
            _ratio(values.get(BASE), values.get(p)) if row.better and p not in incomplete else ""
            for p in others
        ]
        lines.append(
            "| " + " | ".join([label, row.better or "", *cells, *(ratios if BASE in peers else [])]) + " |"
        )
    lines.append("")
    lines.append(
        "\u2020 flagged: client-bound = a load-generator process or the publisher used >= 85% of a core "
        "while this was measured (the client may be what limits it); machine-bound = client and server "
        "together used >= 85% of every core; incomplete = the figure covers only part of the work "
        "(no ratio is given)."
    )
    for where, flag in sorted(flagged.items()):
        lines.append(f"  \u2020 {where}: {flag}")
    seen: set[str] = set()
    for peer in peers:
        for entry in results.get(peer, {}).values():
            for note in (entry.get("median") or {}).get("notes", []):
                if note.startswith("capped") and note not in seen:
                    seen.add(note)
                    lines.append(note)
    lines.append("")
    lines.append("How each figure is taken:")
    for scenario in ("idle", "connect", "fanout", "unicast", "churn"):
        for peer in peers:
            entry = results.get(peer, {}).get(scenario) or {}
            for note in (entry.get("median") or {}).get("notes", []):
                if not note.startswith("capped") and note not in seen:
                    seen.add(note)
                    lines.append(f"- {scenario}: {note}")
    for peer, reason in skipped.items():
        lines.append(f"{peer}: skipped ({reason})")
    for peer in peers:
        for scenario, entry in results.get(peer, {}).items():
            for error in entry.get("errors", []):
                lines.append(f"{peer} {scenario}: ERROR {error}")
    return "\n".join(lines)


def _ordered_rows() -> list[Row]:
    """:data:`ROWS`, each scenario's followed by its client-CPU row."""
    out: list[Row] = []
    for i, row in enumerate(ROWS):
        out.append(row)
        if i + 1 == len(ROWS) or ROWS[i + 1].scenario != row.scenario:
            key = CLIENT_KEYS.get(row.scenario)
            if key:
                label = f"{row.scenario}: client CPU, busiest load-generator process (% of a core)"
                out.append(Row(row.scenario, key, label, None, "%"))
    return out


def render_proxy(report: t.Mapping[str, t.Any]) -> str:
    """The table of scenario ``proxy`` (:mod:`bench.proxy`): publish -> receive per path, and
    nginx - direct per notice (the same notice on the same user's two streams)."""
    direct, nginx = report["direct"], report["nginx"]
    lines = [
        f"proxy: {report['notices']:,} notices, one per POST at {report['rate_per_s']:g}/s, "
        f"median of {report.get('runs', 1)} run(s); nginx configured by docs/PRODUCTION.md",
        "",
        "| publish -> receive | direct | through nginx | nginx - direct (per notice) | nginx / direct |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key, diff in (("p50", "p50_ms", "difference_p50_ms"), ("p99", "p99_ms", "difference_p99_ms")):
        ratio = _ratio(nginx[key], direct[key])
        lines.append(
            f"| {label} [ms] | {fmt(direct[key], 'ms')} | {fmt(nginx[key], 'ms')} "
            f"| {fmt(report[diff], 'ms')} | {ratio} |"
        )
    lines.append(f"| max [ms] | {fmt(direct['max_ms'], 'ms')} | {fmt(nginx['max_ms'], 'ms')} | | |")
    lines.append(f"| lost | {direct['lost']:,} | {nginx['lost']:,} | | |")
    return "\n".join(lines)
