"""The performance harness: our saga against its peers and the plain-SQL limit, one run.

    .venv/bin/python -m benchmarks.harness                      # everything (tens of minutes)
    .venv/bin/python -m benchmarks.harness --quick              # 50 orders, SQLite, seconds
    .venv/bin/python -m benchmarks.harness --backends sqlite,postgresql --orders 2000 \\
        --latencies 0,50 --workers 1,2 --peers dbos,eventsourcing --json bench.json

For each reachable backend, on a fresh database per run and on the same server:

* ours: N orders placed through the command bus, then `fulfillment worker` processes drain
  them (each latency x worker count x order mix); plus an offered-load run at half our best
  throughput for the latency target;
* the peers (`benchmarks/peers/`): DBOS (several modes and concurrencies tried, the best
  kept) and `eventsourcing`, where the library supports the backend;
* the plain-SQL limit (`benchmarks/plain_sql.py`), best of a few client counts.

Prints a Rich table with our ratio against each and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import environment, report
from benchmarks.common import (
    BACKENDS,
    MIXES,
    RssSampler,
    RunMetrics,
    fresh_database,
    self_peak_rss_mib,
    server_reachable,
    workload,
)
from benchmarks.ours import OursConfig, run_backlog, run_offered_load
from benchmarks.plain_sql import best_of

REPO = Path(__file__).resolve().parent.parent
PEERS = ("dbos", "eventsourcing")
PEER_BACKENDS = {"dbos": ("sqlite", "postgresql"), "eventsourcing": ("sqlite", "postgresql")}
PEER_MODULES = {"dbos": "dbos", "eventsourcing": "eventsourcing"}
#: Connections a run may open on the server (PostgreSQL's default max_connections is 100).
CONNECTION_BUDGET = {"sqlite": 10_000, "postgresql": 80, "mysql": 140}
console = Console()
if not console.is_terminal:
    console.width = 200  # a log file or a pipe: keep the tables readable


@dataclass
class Plan:
    backends: list[str]
    orders: int
    latencies: list[float]
    workers: list[int]
    mixes: list[str]
    peers: list[str]
    concurrency: int
    latency_concurrency: int
    plain_clients: list[int]
    dbos_trials: list[tuple[str, int]]
    trial_orders: int
    offered_seconds: float
    rss_orders: list[int]
    #: Where our read models are kept: "process" (`fulfillment projections run` beside
    #: `worker --no-projector`) or "inline" (a projector thread in every worker).
    projector: str = "process"
    ours: bool = True
    plain: bool = True
    json_path: Path = Path("benchmark-results.json")
    doc_path: str | None = None
    runs: list[RunMetrics] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    failed: bool = False


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> Plan:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--latencies", default="0,50", help="carrier latencies in ms")
    p.add_argument("--workers", default="1,2", help="worker process counts")
    p.add_argument("--mixes", default=",".join(MIXES), help="success, compensate10")
    p.add_argument("--peers", default=",".join(PEERS), help="dbos, eventsourcing, or none")
    p.add_argument("--concurrency", type=int, default=64, help="per worker, carrier latency 0")
    p.add_argument("--latency-concurrency", type=int, default=100, help="per worker, latency > 0")
    p.add_argument("--plain-clients", default="1,2,4,8")
    p.add_argument(
        "--dbos-trials",
        default="queue:8,queue:32,thread:8,thread:32",
        help="mode:concurrency, best kept",
    )
    p.add_argument("--trial-orders", type=int, default=300, help="orders per DBOS trial")
    p.add_argument(
        "--offered-seconds", type=float, default=15.0, help="0 disables the offered-load runs"
    )
    p.add_argument("--rss-orders", default="", help="e.g. 10000,100000: worker RSS at each size")
    p.add_argument(
        "--projector",
        choices=("process", "inline"),
        default="process",
        help="our read models: a projector process of their own, or a thread in each worker",
    )
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--json", type=Path, default=Path("benchmark-results.json"))
    p.add_argument("--doc", help="also rewrite the results section of this markdown file")
    p.add_argument(
        "--quick",
        action="store_true",
        help="50 orders, SQLite, latency 0, 1 worker, no peers unless --peers",
    )
    args = p.parse_args(argv)
    explicit = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        defaults = {
            "--backends": "sqlite",
            "--orders": 50,
            "--latencies": "0",
            "--workers": "1",
            "--mixes": "compensate10",
            "--peers": "none",
            "--plain-clients": "1",
            "--dbos-trials": "queue:8",
            "--trial-orders": 50,
            "--offered-seconds": 0.0,
            "--concurrency": 8,
        }
        for flag, value in defaults.items():
            if flag not in explicit:
                setattr(args, flag[2:].replace("-", "_"), value)
    trials = [(m.split(":")[0], int(m.split(":")[1])) for m in args.dbos_trials.split(",") if m]
    return Plan(
        backends=[b for b in args.backends.split(",") if b],
        orders=int(args.orders),
        latencies=[float(x) for x in str(args.latencies).split(",") if x],
        workers=_ints(str(args.workers)),
        mixes=[m for m in str(args.mixes).split(",") if m],
        peers=[p for p in str(args.peers).split(",") if p and p != "none"],
        concurrency=int(args.concurrency),
        latency_concurrency=args.latency_concurrency,
        plain_clients=_ints(str(args.plain_clients)),
        dbos_trials=trials,
        trial_orders=int(args.trial_orders),
        offered_seconds=float(args.offered_seconds),
        rss_orders=_ints(args.rss_orders),
        projector=str(args.projector),
        ours=not args.skip_ours,
        plain=not args.skip_plain,
        json_path=args.json,
        doc_path=args.doc,
    )


def concurrency_for(
    plan: Plan, backend: str, latency: float, workers: int
) -> tuple[int, str | None]:
    """The per-worker concurrency, capped so the run fits the server's connections."""
    wanted = plan.concurrency if latency == 0 else plan.latency_concurrency
    cap = max(1, CONNECTION_BUDGET[backend] // workers)
    if wanted > cap:
        return cap, f"concurrency {wanted} capped at {cap} per worker (server connection limit)"
    return wanted, None


# --- our product ---------------------------------------------------------------------


def run_ours(plan: Plan, backend: str, log_root: Path) -> None:
    for latency in plan.latencies:
        for workers in plan.workers:
            for mix in plan.mixes:
                conc, note = concurrency_for(plan, backend, latency, workers)
                config = OursConfig(workers, conc, latency, projector=plan.projector)
                _ours_backlog(plan, backend, mix, config, log_root, note)
    # The latency target compares one worker at the latency concurrency across latencies.
    if 0.0 in plan.latencies and any(lat > 0 for lat in plan.latencies) and 1 in plan.workers:
        conc, note = concurrency_for(plan, backend, 50.0, 1)
        if conc != concurrency_for(plan, backend, 0.0, 1)[0]:
            _ours_backlog(
                plan,
                backend,
                "success",
                OursConfig(1, conc, 0.0, projector=plan.projector),
                log_root,
                note,
                role="latency_baseline",
            )


def _ours_backlog(
    plan: Plan,
    backend: str,
    mix: str,
    config: OursConfig,
    log_root: Path,
    note: str | None,
    role: str = "",
) -> None:
    label = (
        f"ours {backend} {mix} latency={config.carrier_latency_ms:g} "
        f"workers={config.workers} c={config.concurrency}"
    )
    console.print(f"[cyan]run[/cyan] {label}")
    try:
        with fresh_database(backend) as db:
            log_dir = Path(tempfile.mkdtemp(prefix="workers_", dir=log_root))
            result = run_backlog(db, workload(config_orders(plan, role), mix), mix, config, log_dir)
    except Exception as exc:
        _failed(plan, "ours", backend, label, exc)
        return
    if note:
        result.notes.append(note)
    if role:
        result.config["role"] = role
    _record(plan, result)


def config_orders(plan: Plan, role: str) -> int:
    return int(role.removeprefix("rss_")) if role.startswith("rss_") else plan.orders


def _failed(plan: Plan, system: str, backend: str, label: str, exc: BaseException) -> None:
    """A run that failed is reported, and the others go on."""
    plan.failed = True
    plan.skipped.append({"system": system, "backend": backend, "reason": f"{label}: {exc!r}"})
    console.print(f"[red]failed[/red] {label}: {exc!r}")
    _save(plan)


def run_offered(plan: Plan, backend: str, log_root: Path) -> None:
    """Our p99 at half our best throughput, and DBOS's p99 at the same offered load."""
    best = _best(plan, "ours", backend, "success", 0.0)
    if best is None or plan.offered_seconds <= 0:
        return
    rate = round(best.orders_per_second / 2, 1)
    n = max(50, int(rate * plan.offered_seconds))
    config = OursConfig(
        best.config["workers"], best.config["concurrency"], 0.0, projector=plan.projector
    )
    label = f"ours {backend} offered load {rate}/s x {n}"
    console.print(f"[cyan]run[/cyan] {label}")
    try:
        with fresh_database(backend) as db:
            log_dir = Path(tempfile.mkdtemp(dir=log_root))
            result = run_offered_load(db, workload(n, "success"), "success", config, rate, log_dir)
    except Exception as exc:
        _failed(plan, "ours", backend, label, exc)
        return
    result.config["role"] = "offered_half_max"
    _record(plan, result)
    if "dbos" in plan.peers and backend in PEER_BACKENDS["dbos"]:
        peer_best = _best(plan, "dbos", backend, "success", 0.0)
        mode_conc = peer_best.config["concurrency"] if peer_best else 32
        _run_peer(
            plan,
            "dbos",
            backend,
            "success",
            0.0,
            n,
            ["--mode", "queue", "--concurrency", str(mode_conc), "--rate", str(rate)],
            role="offered_half_max",
        )


def run_rss(plan: Plan, backend: str, log_root: Path) -> None:
    for n in plan.rss_orders:
        conc, note = concurrency_for(plan, backend, 0.0, 1)
        config = OursConfig(
            1, conc, 0.0, timeout_seconds=max(600.0, n / 5), projector=plan.projector
        )
        _ours_backlog(plan, backend, "success", config, log_root, note, role=f"rss_{n}")


# --- peers and the plain-SQL limit -----------------------------------------------------


def run_plain(plan: Plan, backend: str) -> None:
    for mix in plan.mixes:
        label = f"plain_sql {backend} {mix} clients={plan.plain_clients}"
        console.print(f"[cyan]run[/cyan] {label}")
        try:
            best, runs = best_of(backend, plan.orders, mix, plan.plain_clients)
        except Exception as exc:
            _failed(plan, "plain_sql", backend, label, exc)
            continue
        best.config["all_client_counts"] = runs
        _record(plan, best)


def run_peers(plan: Plan, backend: str) -> None:
    for peer in plan.peers:
        reason = _peer_unavailable(peer, backend)
        if reason:
            plan.skipped.append({"system": peer, "backend": backend, "reason": reason})
            console.print(f"[yellow]skip[/yellow] {peer} on {backend}: {reason}")
            continue
        for latency in plan.latencies:
            for mix in plan.mixes:
                if peer == "dbos":
                    _dbos_best(plan, backend, mix, latency)
                else:
                    _run_peer(plan, peer, backend, mix, latency, plan.orders, [])


def _dbos_best(plan: Plan, backend: str, mix: str, latency: float) -> None:
    trials = plan.dbos_trials
    if latency > 0:  # a slow carrier wants more workflows in flight
        trials = sorted({(m, max(c, plan.latency_concurrency)) for m, c in trials})
    # A DBOS workflow thread may hold a service connection and a system-database one.
    budget = (CONNECTION_BUDGET[backend] - 12) // 2
    trials = [(m, min(c, budget)) for m, c in trials]
    trials = list(dict.fromkeys(trials))
    if len(trials) == 1:
        mode, conc = trials[0]
        _run_peer(
            plan,
            "dbos",
            backend,
            mix,
            latency,
            plan.orders,
            ["--mode", mode, "--concurrency", str(conc)],
        )
        return
    scores = []
    for mode, conc in trials:
        r = _run_peer(
            plan,
            "dbos",
            backend,
            mix,
            latency,
            plan.trial_orders,
            ["--mode", mode, "--concurrency", str(conc)],
            keep=False,
        )
        if r is not None:
            console.print(f"    trial: {r.orders_per_second:8.1f} orders/s")
            scores.append((r.orders_per_second, mode, conc))
            plan.trials.append(
                {
                    "system": "dbos",
                    "backend": backend,
                    "mix": mix,
                    "carrier_latency_ms": latency,
                    "mode": mode,
                    "concurrency": conc,
                    "orders": plan.trial_orders,
                    "orders_per_second": round(r.orders_per_second, 1),
                }
            )
    if scores:
        _, mode, conc = max(scores)
        r = _run_peer(
            plan,
            "dbos",
            backend,
            mix,
            latency,
            plan.orders,
            ["--mode", mode, "--concurrency", str(conc)],
        )
        if r is not None:
            r.config["chosen_from_trials"] = True


def _peer_unavailable(peer: str, backend: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(PEER_MODULES[peer]) is None:
        return f"package {PEER_MODULES[peer]!r} not installed (pip install -e '.[bench]')"
    if backend not in PEER_BACKENDS[peer]:
        if peer == "dbos":
            return "DBOS supports only PostgreSQL and SQLite as its system database"
        return "the eventsourcing library has no MariaDB/MySQL persistence module"
    return None


def _run_peer(
    plan: Plan,
    peer: str,
    backend: str,
    mix: str,
    latency: float,
    n: int,
    extra: list[str],
    role: str = "",
    keep: bool = True,
) -> RunMetrics | None:
    label = f"{peer} {backend} {mix} latency={latency:g} n={n} {' '.join(extra)}"
    console.print(f"[cyan]run[/cyan] {label}")
    with fresh_database(backend) as db, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            f"benchmarks.peers.{peer}_saga",
            "--url",
            db.url,
            "--orders",
            str(n),
            "--mix",
            mix,
            "--carrier-latency-ms",
            str(latency),
            "--json",
            str(out),
            *extra,
        ]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        with RssSampler() as rss, open(Path(tmp) / "log.txt", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            rss.register(peer, proc.pid)
            code = proc.wait()
        if code != 0 or not out.exists():
            tail = (Path(tmp) / "log.txt").read_text(errors="replace")[-1500:]
            plan.skipped.append(
                {"system": peer, "backend": backend, "reason": f"run failed ({label}): {tail}"}
            )
            console.print(f"[red]failed[/red] {label}\n{tail}")
            return None
        data = json.loads(out.read_text())
    result = RunMetrics(**{k: data[k] for k in RunMetrics.__dataclass_fields__ if k in data})
    result.peak_rss_mib = {
        peer: max(data["peak_rss_mib"].get(peer, 0.0), rss.peaks_mib().get(peer, 0.0))
    }
    if role:
        result.config["role"] = role
    if keep:
        _record(plan, result)
    return result


# --- bookkeeping ---------------------------------------------------------------------


def _record(plan: Plan, result: RunMetrics) -> None:
    plan.runs.append(result)
    _save(plan)
    console.print(
        f"    {result.orders_per_second:8.1f} orders/s  p99 {result.latency_ms.get('p99')} ms  "
        f"terminal {result.terminal}/{result.orders}  RSS {result.peak_rss_mib}"
    )


def _best(plan: Plan, system: str, backend: str, mix: str, latency: float) -> RunMetrics | None:
    candidates = [
        r
        for r in plan.runs
        if r.system == system
        and r.backend == backend
        and r.mix == mix
        and r.carrier_latency_ms == latency
        and not r.config.get("role")
    ]
    return max(candidates, key=lambda r: r.orders_per_second, default=None)


def document(plan: Plan) -> dict[str, Any]:
    """The JSON document of the runs so far (written after every run, so a crash loses none)."""
    meta = dict(plan.meta)
    meta["duration_seconds"] = round(time.time() - meta.pop("_started"), 1)
    meta["machine"] = dict(
        meta["machine"], load_average_at_end=[round(x, 2) for x in os.getloadavg()]
    )
    meta["harness_peak_rss_mib"] = self_peak_rss_mib()
    runs = [r.as_dict() for r in plan.runs]
    return {
        "meta": meta,
        "plan": {
            "backends": plan.backends,
            "orders": plan.orders,
            "latencies_ms": plan.latencies,
            "workers": plan.workers,
            "mixes": plan.mixes,
            "peers": plan.peers,
            "concurrency": plan.concurrency,
            "latency_concurrency": plan.latency_concurrency,
            "plain_clients": plan.plain_clients,
            "dbos_trials": [f"{m}:{c}" for m, c in plan.dbos_trials],
            "offered_seconds": plan.offered_seconds,
            "rss_orders": plan.rss_orders,
        },
        "runs": runs,
        "dbos_trials": plan.trials,
        "skipped": plan.skipped,
        "comparisons": report.comparisons(runs),
        "targets": report.targets(runs, plan.backends),
    }


def _save(plan: Plan) -> None:
    if plan.meta:
        plan.json_path.write_text(json.dumps(document(plan), indent=2))


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    started = time.time()
    plan.meta = environment.describe(
        plan.backends, argv if argv is not None else sys.argv[1:], started
    )
    plan.meta["_started"] = started
    log_root = Path(tempfile.mkdtemp(prefix="bench_logs_"))
    for backend in plan.backends:
        reason = server_reachable(backend)
        if reason:
            plan.skipped.append({"system": "*", "backend": backend, "reason": reason})
            console.print(f"[yellow]skip[/yellow] {backend}: {reason}")
            continue
        if plan.ours:
            run_ours(plan, backend, log_root)
        if plan.plain:
            run_plain(plan, backend)
        if plan.peers:
            run_peers(plan, backend)
        if plan.ours:
            run_offered(plan, backend, log_root)
            run_rss(plan, backend, log_root)
    doc = document(plan)
    plan.json_path.write_text(json.dumps(doc, indent=2))
    report.print_tables(console, doc)
    if plan.doc_path:
        report.update_doc(plan.doc_path, doc)
        console.print(f"results section of [bold]{plan.doc_path}[/bold] rewritten")
    if plan.failed:
        console.print(f"[red]some runs failed[/red]; their logs are in {log_root}")
    else:
        shutil.rmtree(log_root, ignore_errors=True)
    console.print(f"JSON written to [bold]{plan.json_path}[/bold]")
    return 1 if plan.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
