"""Ratios, the issue's targets, and the Rich tables, computed from the runs of one harness run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

Run = dict[str, Any]
DBOS_BACKENDS = ("sqlite", "postgresql")


def _plain_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if not r["config"].get("role")]


def best(
    runs: list[Run], system: str, backend: str, mix: str, latency: float, **config: Any
) -> Run | None:
    """The highest-throughput regular run of a system (offered-load and RSS runs excluded)."""
    candidates = [
        r
        for r in _plain_runs(runs)
        if r["system"] == system
        and r["backend"] == backend
        and r["mix"] == mix
        and r["carrier_latency_ms"] == latency
        and all(r["config"].get(k) == v for k, v in config.items())
    ]
    return max(candidates, key=lambda r: r["orders_per_second"], default=None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def comparisons(runs: list[Run]) -> list[dict[str, Any]]:
    """Our best throughput against each other system, per backend, mix and latency."""
    out = []
    keys = sorted({(r["backend"], r["mix"], r["carrier_latency_ms"]) for r in _plain_runs(runs)})
    for backend, mix, latency in keys:
        ours = best(runs, "ours", backend, mix, latency)
        if ours is None:
            continue
        for system in ("dbos", "eventsourcing", "plain_sql"):
            other = best(runs, system, backend, mix, latency)
            if other is None:
                continue
            out.append(
                {
                    "backend": backend,
                    "mix": mix,
                    "carrier_latency_ms": latency,
                    "against": system,
                    "ours_orders_per_second": ours["orders_per_second"],
                    "their_orders_per_second": other["orders_per_second"],
                    "ratio": _ratio(ours["orders_per_second"], other["orders_per_second"]),
                    "ours_p99_ms": ours["latency_ms"]["p99"],
                    "their_p99_ms": other["latency_ms"]["p99"],
                }
            )
    return out


def _target(
    name: str,
    backend: str,
    measured: float | None,
    threshold: str,
    met: bool | None,
    detail: str,
    mix: str = "",
) -> dict[str, Any]:
    return {
        "target": name,
        "backend": backend,
        "mix": mix,
        "measured": measured,
        "threshold": threshold,
        "met": met,
        "detail": detail,
    }


def targets(runs: list[Run], backends: list[str]) -> list[dict[str, Any]]:
    """Every target of the issue that this run measured, with the figure and whether it is met."""
    out: list[dict[str, Any]] = []
    mixes = sorted({r["mix"] for r in runs})
    for backend in backends:
        for mix in mixes:
            ours = best(runs, "ours", backend, mix, 0.0)
            if ours is None:
                continue
            dbos = best(runs, "dbos", backend, mix, 0.0)
            if backend in DBOS_BACKENDS and dbos is not None:
                ratio = _ratio(ours["orders_per_second"], dbos["orders_per_second"])
                out.append(
                    _target(
                        "throughput >= 5x DBOS (latency 0)",
                        backend,
                        ratio,
                        ">= 5.0",
                        ratio is not None and ratio >= 5.0,
                        f"ours {ours['orders_per_second']} vs DBOS "
                        f"{dbos['orders_per_second']} orders/s",
                        mix,
                    )
                )
            plain = best(runs, "plain_sql", backend, mix, 0.0)
            if plain is not None:
                frac = _ratio(ours["orders_per_second"], plain["orders_per_second"])
                out.append(
                    _target(
                        ">= 40% of the plain-SQL limit (latency 0)",
                        backend,
                        frac,
                        ">= 0.40",
                        frac is not None and frac >= 0.40,
                        f"ours {ours['orders_per_second']} vs plain SQL "
                        f"{plain['orders_per_second']} orders/s",
                        mix,
                    )
                )
        out.extend(_offered_target(runs, backend))
        out.extend(_latency_target(runs, backend))
        out.extend(_rss_target(runs, backend))
    return out


def _role(runs: list[Run], system: str, backend: str, role: str) -> Run | None:
    return next(
        (
            r
            for r in runs
            if r["system"] == system and r["backend"] == backend and r["config"].get("role") == role
        ),
        None,
    )


def _offered_target(runs: list[Run], backend: str) -> list[dict[str, Any]]:
    ours = _role(runs, "ours", backend, "offered_half_max")
    if ours is None:
        return []
    dbos = _role(runs, "dbos", backend, "offered_half_max")
    rate = ours["config"].get("offered_per_second")
    if dbos is None:
        reason = (
            "DBOS does not support this backend" if backend not in DBOS_BACKENDS else "DBOS not run"
        )
        return [
            _target(
                "p99 at half our max throughput < DBOS p99 at the same load",
                backend,
                ours["latency_ms"]["p99"],
                "< DBOS p99",
                None,
                f"offered {rate}/s; {reason}",
            )
        ]
    a, b = ours["latency_ms"]["p99"], dbos["latency_ms"]["p99"]
    return [
        _target(
            "p99 at half our max throughput < DBOS p99 at the same load",
            backend,
            a,
            f"< {b} ms (DBOS)",
            a is not None and b is not None and a < b,
            f"offered {rate}/s: ours p99 {a} ms, DBOS p99 {b} ms "
            f"(DBOS completed {dbos['orders_per_second']}/s)",
        )
    ]


def _latency_target(runs: list[Run], backend: str) -> list[dict[str, Any]]:
    slow = [
        r
        for r in _plain_runs(runs)
        if r["system"] == "ours"
        and r["backend"] == backend
        and r["carrier_latency_ms"] > 0
        and r["config"]["workers"] == 1
        and r["mix"] == "success"
    ]
    out = []
    for run in slow:
        conc = run["config"]["concurrency"]
        base = _role(runs, "ours", backend, "latency_baseline")
        if base is None or base["config"]["concurrency"] != conc:
            base = best(runs, "ours", backend, "success", 0.0, workers=1, concurrency=conc)
        if base is None:
            continue
        frac = _ratio(run["orders_per_second"], base["orders_per_second"])
        out.append(
            _target(
                f"1 worker, latency {run['carrier_latency_ms']:g} ms, sustains >= 60% of latency 0",
                backend,
                frac,
                ">= 0.60",
                frac is not None and frac >= 0.60,
                f"concurrency {conc}: {run['orders_per_second']} vs "
                f"{base['orders_per_second']} orders/s",
                "success",
            )
        )
    return out


def _rss_target(runs: list[Run], backend: str) -> list[dict[str, Any]]:
    sized = sorted(
        (
            r
            for r in runs
            if r["system"] == "ours"
            and r["backend"] == backend
            and str(r["config"].get("role", "")).startswith("rss_")
        ),
        key=lambda r: r["orders"],
    )
    if len(sized) < 2:
        return []
    small, large = sized[0], sized[-1]
    a, b = small["peak_rss_mib"].get("worker-0"), large["peak_rss_mib"].get("worker-0")
    change = _ratio(b, a)
    return [
        _target(
            f"worker peak RSS within +-10% ({small['orders']} vs {large['orders']} orders)",
            backend,
            change,
            "0.90..1.10",
            change is not None and 0.9 <= change <= 1.1,
            f"{a} MiB vs {b} MiB",
        )
    ]


# --- printing ------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v.is_integer() and abs(v) < 10:
        return str(int(v))
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def print_tables(console: Console, doc: dict[str, Any]) -> None:
    runs = Table(title="Runs (throughput: backlog drained from first step to last terminal order)")
    for col in (
        "backend",
        "system",
        "mix",
        "carrier ms",
        "setup",
        "orders/s",
        "events/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "peak RSS MiB",
        "done",
    ):
        runs.add_column(
            col, justify="right" if col not in ("backend", "system", "mix", "setup") else "left"
        )
    for r in doc["runs"]:
        c = r["config"]
        setup = ", ".join(
            f"{k}={c[k]}"
            for k in ("role", "workers", "concurrency", "mode", "clients", "offered_per_second")
            if c.get(k) is not None
        )
        runs.add_row(
            r["backend"],
            r["system"],
            r["mix"],
            f"{r['carrier_latency_ms']:g}",
            setup,
            _fmt(r["orders_per_second"]),
            _fmt(r["events_per_second"]),
            _fmt(r["latency_ms"]["p50"]),
            _fmt(r["latency_ms"]["p95"]),
            _fmt(r["latency_ms"]["p99"]),
            ", ".join(f"{k} {v:g}" for k, v in r["peak_rss_mib"].items()),
            f"{r['terminal']}/{r['orders']}",
        )
    console.print(runs)
    ratios = Table(title="Our best throughput against each (ratio = ours / theirs)")
    for col in (
        "backend",
        "mix",
        "carrier ms",
        "against",
        "ours/s",
        "theirs/s",
        "ratio",
        "our p99",
        "their p99",
    ):
        ratios.add_column(col)
    for c in doc["comparisons"]:
        ratios.add_row(
            c["backend"],
            c["mix"],
            f"{c['carrier_latency_ms']:g}",
            c["against"],
            _fmt(c["ours_orders_per_second"]),
            _fmt(c["their_orders_per_second"]),
            _fmt(c["ratio"]),
            _fmt(c["ours_p99_ms"]),
            _fmt(c["their_p99_ms"]),
        )
    console.print(ratios)
    goals = Table(title="Targets of the issue")
    for col in ("target", "backend", "mix", "measured", "threshold", "met", "detail"):
        goals.add_column(col)
    for t in doc["targets"]:
        met = "-" if t["met"] is None else ("[green]yes[/green]" if t["met"] else "[red]no[/red]")
        goals.add_row(
            t["target"],
            t["backend"],
            t["mix"],
            _fmt(t["measured"]),
            t["threshold"],
            met,
            t["detail"],
        )
    console.print(goals)
    for s in doc["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {s['system']} on {s['backend']}: {s['reason']}")


# --- markdown (docs/performance.md) --------------------------------------------------

DOC_START = "<!-- results:start (written by benchmarks.harness --doc) -->"
DOC_END = "<!-- results:end -->"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _setup(r: Run) -> str:
    c = r["config"]
    keys = ("role", "workers", "concurrency", "mode", "clients", "offered_per_second")
    return ", ".join(f"{k}={c[k]}" for k in keys if c.get(k) is not None)


def markdown(doc: dict[str, Any]) -> str:
    """The results section of docs/performance.md, from one harness run."""
    meta = doc["meta"]
    m = meta["machine"]
    out = [
        DOC_START,
        "",
        f"Run of {meta['started_at']} ({meta['duration_seconds']:.0f} s), product at "
        f"`{meta.get('git_revision')}`:",
        "",
        f"    {meta['command']}",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; load average at the end {m['load_average_at_end']}. "
        "Servers: " + "; ".join(f"{k}: {v}" for k, v in meta["servers"].items()) + ". "
        "Packages: " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if v) + ".",
        "",
        "### Targets",
        "",
        _md_table(
            ["target", "backend", "mix", "measured", "threshold", "met", "detail"],
            [
                [
                    t["target"],
                    t["backend"],
                    t["mix"],
                    _fmt(t["measured"]),
                    t["threshold"],
                    "-" if t["met"] is None else ("yes" if t["met"] else "**no**"),
                    t["detail"],
                ]
                for t in doc["targets"]
            ],
        ),
        "",
        "### Our best throughput against each (ratio = ours / theirs)",
        "",
        _md_table(
            [
                "backend",
                "mix",
                "carrier ms",
                "against",
                "ours/s",
                "theirs/s",
                "ratio",
                "our p99 ms",
                "their p99 ms",
            ],
            [
                [
                    c["backend"],
                    c["mix"],
                    f"{c['carrier_latency_ms']:g}",
                    c["against"],
                    _fmt(c["ours_orders_per_second"]),
                    _fmt(c["their_orders_per_second"]),
                    _fmt(c["ratio"]),
                    _fmt(c["ours_p99_ms"]),
                    _fmt(c["their_p99_ms"]),
                ]
                for c in doc["comparisons"]
            ],
        ),
        "",
        "### Every run",
        "",
        _md_table(
            [
                "backend",
                "system",
                "mix",
                "carrier ms",
                "setup",
                "orders/s",
                "events/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "peak RSS MiB",
                "done",
            ],
            [
                [
                    r["backend"],
                    r["system"],
                    r["mix"],
                    f"{r['carrier_latency_ms']:g}",
                    _setup(r),
                    _fmt(r["orders_per_second"]),
                    _fmt(r["events_per_second"]),
                    _fmt(r["latency_ms"]["p50"]),
                    _fmt(r["latency_ms"]["p95"]),
                    _fmt(r["latency_ms"]["p99"]),
                    ", ".join(f"{k} {v:g}" for k, v in r["peak_rss_mib"].items()),
                    f"{r['terminal']}/{r['orders']}",
                ]
                for r in doc["runs"]
            ],
        ),
    ]
    if doc.get("dbos_trials"):
        out += [
            "",
            "DBOS trials (the best mode and concurrency is re-run with all the orders):",
            "",
        ]
        out.append(
            _md_table(
                ["backend", "mix", "carrier ms", "mode", "concurrency", "orders", "orders/s"],
                [
                    [
                        t["backend"],
                        t["mix"],
                        f"{t['carrier_latency_ms']:g}",
                        t["mode"],
                        str(t["concurrency"]),
                        str(t["orders"]),
                        _fmt(t["orders_per_second"]),
                    ]
                    for t in doc["dbos_trials"]
                ],
            )
        )
    if doc["skipped"]:
        out += ["", "Not measured:", ""]
        out += [
            f"- {s['system']} on {s['backend']}: {s['reason'].splitlines()[0][:300]}"
            for s in doc["skipped"]
        ]
    out += ["", DOC_END]
    return "\n".join(out)


def update_doc(path: str, doc: dict[str, Any]) -> None:
    """Replace the results section of a markdown file (between the markers), or append it."""
    from pathlib import Path

    file = Path(path)
    text = file.read_text() if file.exists() else ""
    section = markdown(doc)
    if DOC_START in text and DOC_END in text:
        head, rest = text.split(DOC_START, 1)
        tail = rest.split(DOC_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    file.write_text(text)


def main() -> None:
    """`python -m benchmarks.report RESULTS.json [--doc docs/performance.md]`: print, or write."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--doc", help="rewrite the results section of this markdown file")
    args = parser.parse_args()
    doc = json.loads(args.results.read_text())
    if args.doc:
        update_doc(args.doc, doc)
    else:
        print_tables(Console(width=200), doc)


if __name__ == "__main__":
    main()
