"""Scaling across hosts: N `fulfillment worker` processes, each in a network namespace of
its own (a "host"), on a veth link to the database server with a round-trip delay.

    .venv/bin/python -m benchmarks.scaling --backend postgresql --workers 1,2,4 \\
        --orders 1000 --latencies 0 --rtt-ms 1.0 --json scaling.json --plot docs/scaling.png

For each worker count N and carrier latency: a fresh database, a backlog of `--orders`
orders placed from the root namespace (`benchmarks.ours.place_all`),
then N workers started, each inside its own namespace (`benchmarks/netns.py`, addresses
127.77.<i>.1/.2), and timed until every order is terminal (`benchmarks.ours`). The
projector process runs in the root namespace. Measured: orders/s, p99 latency, and the
database SERVER's CPU (utime+stime of every postgres / mariadbd process, as cores used
over the drain window), the workers' CPU and, with `--link relay`, the relays' CPU.

How a namespace reaches the server (which listens on 127.0.0.1 of the root namespace):

* `--link kernel` (default): the delay is `tc netem` (rtt/2 each way on the veth) and the
  path is the kernel's: an nftables table `fs_scaling_<pid>` in the root namespace DNATs
  127.77.<i>.1:<port> to 127.0.0.1:<port> and SNATs the source to 127.0.0.1 (so the
  server's local-only access rules apply). Needs root, `ip`, `tc`, `nft` and netem.
* `--link relay`: kernels without netem. One relay PROCESS per namespace, in the root
  namespace on 127.77.<i>.1, copies bytes to 127.0.0.1:<port> and holds every chunk
  rtt/2 in each direction: the delay is emulated in user space, and the relay's CPU is
  reported (it shares the machine's cores).

The namespaces, links, nftables table and every process are removed at the end, also on
Ctrl-C. Optional, on the same kind of link: DBOS (`--dbos queue:32`, one process in one
namespace) and the plain-SQL limit (`--plain-clients 1,2,4`, its clients in one namespace).
Exits 2, saying why in one line, when it cannot make namespaces here.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from benchmarks import environment, netns
from benchmarks.common import (
    ADMIN_URLS,
    Database,
    RssSampler,
    RunMetrics,
    fresh_database,
    server_reachable,
    workload,
)
from benchmarks.harness import CONNECTION_BUDGET
from benchmarks.ours import (
    OursConfig,
    WorkerFleet,
    metrics_from_engine,
    place_all,
    product_env,
    setup_app,
    wait_projected,
    wait_terminal,
)
from fulfillment.adapters import tables as t
from fulfillment.config import STOCK_COMMITS

REPO = Path(__file__).resolve().parent.parent
SERVER_PROCESSES = {"postgresql": ("postgres",), "mysql": ("mariadbd", "mysqld")}
PORTS = {"postgresql": 5432, "mysql": 3306}
TICKS = os.sysconf("SC_CLK_TCK")
console = Console()
if not console.is_terminal:
    console.width = 200


# --- CPU of processes ------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, in seconds (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core; /proc/stat's first line
    less idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def server_pids(backend: str) -> list[int]:
    names = SERVER_PROCESSES[backend]
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() in names:
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        value = cpu_seconds(pid)
        if value is not None:
            out[pid] = value
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (a process born in between counts from 0;
    one that exited in between is lost: the server's backends live as long as the pools)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class ServerCpu:
    """Samples the server's CPU and the head of the events table every `interval` s, so
    the CPU can be taken over the drain window (from the first step after placement)."""

    def __init__(self, backend: str, engine: Any, interval: float = 0.1) -> None:
        self.backend = backend
        self.engine = engine
        self.interval = interval
        self.samples: list[tuple[float, dict[int, float], int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="server-cpu", daemon=True)

    def _head(self) -> int:
        with self.engine.connect() as conn:
            head = conn.execute(select(func.max(t.events.c.position))).scalar()
            conn.rollback()
        return int(head or 0)

    def _sample(self) -> None:
        now, server = time.monotonic(), cpu_of(server_pids(self.backend))
        self.samples.append((now, server, self._head(), machine_busy_seconds()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ServerCpu:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def cores(self) -> tuple[float, float, float]:
        """(server cores used, whole machine's cores used, window seconds): from the last
        sample before the head first moved past the placed backlog to the last sample."""
        if len(self.samples) < 2:
            return 0.0, 0.0, 0.0
        placed = self.samples[0][2]
        start = next(
            (i - 1 for i, s in enumerate(self.samples) if s[2] > placed), len(self.samples) - 2
        )
        t0, c0, _, m0 = self.samples[max(0, start)]
        t1, c1, _, m1 = self.samples[-1]
        seconds = max(1e-9, t1 - t0)
        return cpu_delta(c0, c1) / seconds, (m1 - m0) / seconds, seconds


# --- the links ---------------------------------------------------------------------------


def netem_missing() -> str | None:
    """Why `tc netem` cannot be used here, or None (tried on a throwaway veth)."""
    tag = f"fsq{os.getpid() % 100000}"
    try:
        subprocess.run(
            ["ip", "link", "add", tag, "type", "veth", "peer", "name", f"{tag}p"],
            check=True,
            capture_output=True,
        )
        proc = subprocess.run(
            ["tc", "qdisc", "add", "dev", tag, "root", "netem", "delay", "1ms"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return f"tc netem is not available ({proc.stderr.strip() or proc.returncode})"
        return None
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot make a veth link: {exc}"
    finally:
        subprocess.run(["ip", "link", "del", tag], capture_output=True, check=False)


def free_indices(n: int) -> list[int]:
    """N namespace numbers whose 127.77.<i>.0/24 no interface of this machine uses now
    (tests make namespaces on the same range at random)."""
    used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    free = [i for i in range(100, 250) if f"127.77.{i}." not in used]
    if len(free) < n:
        raise RuntimeError("not enough free 127.77.<i>.0/24 ranges for the namespaces")
    return free[:n]


class Nat:
    """The kernel path: one nftables table, DNAT link address -> 127.0.0.1, SNAT the
    namespace's source to 127.0.0.1; removed by close()."""

    def __init__(self) -> None:
        self.table = f"fs_scaling_{os.getpid()}"
        self.made = False

    def _nft(self, *args: str) -> None:
        subprocess.run(["nft", *args], check=True, capture_output=True, text=True, timeout=30)

    def add(self, ns: netns.Namespace, port: int) -> None:
        if not self.made:
            self._nft("add", "table", "ip", self.table)
            self.made = True
            self._nft(
                "add", "chain", "ip", self.table, "pre",
                "{ type nat hook prerouting priority -100; }",
            )  # fmt: skip
            self._nft(
                "add", "chain", "ip", self.table, "in", "{ type nat hook input priority 100; }"
            )
        self._nft(
            "add", "rule", "ip", self.table, "pre", "iifname", ns.host_if,
            "ip", "daddr", ns.host_ip, "tcp", "dport", str(port),
            "dnat", "to", f"127.0.0.1:{port}",
        )  # fmt: skip
        self._nft(
            "add", "rule", "ip", self.table, "in", "ip", "saddr", ns.ns_ip,
            "ip", "daddr", "127.0.0.1", "tcp", "dport", str(port), "snat", "to", "127.0.0.1",
        )  # fmt: skip

    def close(self) -> None:
        if self.made:
            subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True)
            self.made = False


def delay_relay(listen_host: str, upstream: tuple[str, int], delay_s: float) -> None:
    """A relay (run as a process of its own) holding each chunk `delay_s` each way.

    select() (not epoll) for microsecond timeouts; the delay is constant, so one FIFO of
    pending chunks is in due order. Prints its port on stdout, runs until killed."""
    listener = socket.create_server((listen_host, 0))
    listener.setblocking(False)
    sel = selectors.SelectSelector()
    sel.register(listener, selectors.EVENT_READ)
    peers: dict[socket.socket, socket.socket] = {}
    pending: collections.deque[tuple[float, socket.socket, bytes | None]] = collections.deque()
    print(listener.getsockname()[1], flush=True)

    def close(sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(sock)
        peers.pop(sock, None)
        sock.close()

    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else 1.0
        for key, _ in sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                with contextlib.suppress(BlockingIOError):
                    client, _ = listener.accept()
                    server = socket.create_connection(upstream, timeout=5)
                    for s in (client, server):
                        s.settimeout(None)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        sel.register(s, selectors.EVENT_READ)
                    peers[client], peers[server] = server, client
                continue
            try:
                data = sock.recv(262144)
            except OSError:
                data = b""
            other = peers.get(sock)
            if other is not None:
                pending.append((time.monotonic() + delay_s, other, data or None))
            if not data:
                close(sock)
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, dest, chunk = pending.popleft()
            if dest.fileno() < 0:
                continue
            try:
                if chunk is None:
                    raise OSError
                dest.sendall(chunk)
            except OSError:
                close(dest)


@dataclass
class Host:
    """One namespace and how it reaches the server: (host, port) and, for the relay
    link, the relay process."""

    ns: netns.Namespace
    host: str
    port: int
    relay: subprocess.Popen[str] | None = None

    def url(self, db_url: str) -> str:
        return make_url(db_url).set(host=self.host, port=self.port).render_as_string(False)


@dataclass
class Hosts:
    """Every namespace of the run, made up front and removed by close()."""

    link: str
    backend: str
    rtt_ms: float
    hosts: list[Host] = field(default_factory=list)
    nat: Nat = field(default_factory=Nat)

    def make(self, n: int) -> None:
        port = PORTS[self.backend]
        for index in free_indices(n):
            delay = self.rtt_ms / 2 if self.link == "kernel" else 0.0
            ns = netns.Namespace.create(index, delay_ms=delay)
            if self.link == "kernel":
                self.hosts.append(Host(ns, ns.host_ip, port))
                self.nat.add(ns, port)
                continue
            relay = subprocess.Popen(
                [
                    sys.executable, "-m", "benchmarks.scaling", "_relay",
                    ns.host_ip, str(port), str(self.rtt_ms / 2000.0),
                ],
                cwd=REPO, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            host = Host(ns, ns.host_ip, 0, relay)
            self.hosts.append(host)
            assert relay.stdout is not None
            host.port = int(relay.stdout.readline())

    def relay_cpu(self) -> dict[int, float]:
        return cpu_of([h.relay.pid for h in self.hosts if h.relay is not None])

    def close(self) -> None:
        for h in self.hosts:
            if h.relay is not None and h.relay.poll() is None:
                h.relay.kill()
                h.relay.wait()
        self.nat.close()
        for h in self.hosts:
            h.ns.close()
        self.hosts.clear()


def measure_rtt(host: Host, db_url: str, n: int = 300) -> float | None:
    """Median time of `SELECT 1` from inside the namespace, in ms (link + server)."""
    code = (
        "import statistics,sys,time\n"
        "from sqlalchemy import create_engine,text\n"
        "from fulfillment.adapters.db import normalize_url\n"
        "e=create_engine(normalize_url(sys.argv[1]))\n"
        "c=e.connect();ts=[]\n"
        f"for _ in range({n}):\n"
        " s=time.perf_counter();c.execute(text('SELECT 1')).scalar();"
        "ts.append(time.perf_counter()-s)\n"
        "print(statistics.median(ts)*1000)\n"
    )
    proc = subprocess.run(
        host.ns.command([sys.executable, "-c", code, host.url(db_url)]),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return round(float(proc.stdout.strip()), 3)
    except ValueError:
        return None


# --- our workers, one per namespace ------------------------------------------------------


class NamespacedFleet(WorkerFleet):
    """`WorkerFleet` whose worker n runs inside namespace n, with that namespace's URL;
    the projector stays in the root namespace."""

    def __init__(self, db: Database, config: OursConfig, rss: RssSampler, log_dir: Path,
                 hosts: list[Host], stock_commit: str) -> None:  # fmt: skip
        super().__init__(db, config, rss, log_dir)
        self.hosts = hosts
        self.stock_commit = stock_commit

    def _spawn_in(self, name: str, args: list[str], host: Host | None) -> None:
        env = product_env(self.db, self.config.carrier_latency_ms)
        env["FULFILLMENT_STOCK_COMMIT"] = self.stock_commit
        cmd = [sys.executable, "-m", "fulfillment.entrypoints.cli", *args]
        if host is not None:
            env["FULFILLMENT_DATABASE_URL"] = host.url(self.db.url)
            cmd = host.ns.command(cmd)  # `ip netns exec` execs: the pid is the worker's
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (kept open)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(proc)
        self.names.append(name)
        self.rss.register(name, proc.pid)

    def start(self) -> None:
        for n in range(self.config.workers):
            args = ["worker", "--concurrency", str(self.config.concurrency), "--no-migrate"]
            self._spawn_in(f"worker-{n}", [*args, "--no-projector"], self.hosts[n])
        self._spawn_in("projector", ["projections", "run"], None)

    def worker_cpu(self) -> dict[int, float]:
        return cpu_of(
            [p.pid for p, n in zip(self.procs, self.names, strict=True) if n != "projector"]
        )


def concurrency(backend: str, latency: float, workers: int, args: argparse.Namespace) -> int:
    """Per-worker concurrency, capped so the run fits the server's connections (as the
    harness: `CONNECTION_BUDGET` shared by the workers)."""
    wanted = args.concurrency if latency == 0 else args.latency_concurrency
    return max(1, min(wanted, CONNECTION_BUDGET[backend] // workers))


def run_ours(
    backend: str, hosts: Hosts, workers: int, latency: float, args: argparse.Namespace,
    log_root: Path, stock_commit: str,
) -> dict[str, Any]:  # fmt: skip
    conc = concurrency(backend, latency, workers, args)
    config = OursConfig(workers, conc, latency)
    specs = workload(args.orders, args.mix)
    with fresh_database(backend) as db:
        app = setup_app(db, latency)
        try:
            place_all(app, specs, config.placers)
            log_dir = Path(tempfile.mkdtemp(prefix=f"w{workers}_", dir=log_root))
            relay_before = hosts.relay_cpu()
            with RssSampler() as rss, ServerCpu(backend, app.engine) as server:
                fleet = NamespacedFleet(
                    db, config, rss, log_dir, hosts.hosts[:workers], stock_commit
                )
                fleet.start()
                started = time.monotonic()
                try:
                    done = wait_terminal(app, len(specs), fleet, config.timeout_seconds)
                    server.stop()
                    wall = time.monotonic() - started
                    workers_cpu = sum(fleet.worker_cpu().values())
                    relay_cpu = cpu_delta(relay_before, hosts.relay_cpu())
                    projected = wait_projected(app) if done else None
                finally:
                    fleet.stop()
            figures = metrics_from_engine(app.engine, window_from="first_step")
        finally:
            app.close()
    cores, machine_cores, window = server.cores()
    seconds = figures["seconds"]
    terminal = figures["fulfilled"] + figures["cancelled"]
    from benchmarks.common import latency_summary

    return {
        "system": f"ours (stock: {stock_commit})",
        "stock_commit": stock_commit,
        "backend": backend,
        "workers": workers,
        "concurrency": conc,
        "carrier_latency_ms": latency,
        "orders": len(specs),
        "terminal": terminal,
        "done": done,
        "seconds": round(seconds, 3),
        "orders_per_second": round(terminal / seconds, 1) if seconds else 0.0,
        "latency_ms": latency_summary(figures["latencies"]),
        "server_cpu_cores": round(cores, 2),
        "machine_cpu_cores": round(machine_cores, 2),
        "server_cpu_window_s": round(window, 2),
        # workers' CPU over their whole life (startup included) / the wall time to done
        "workers_cpu_cores": round(workers_cpu / max(1e-9, wall), 2),
        "relay_cpu_cores": round(relay_cpu / max(1e-9, wall), 2) if hosts.link == "relay" else None,
        "peak_rss_mib": rss.peaks_mib(),
        "projected_after_s": projected,
    }


# --- peers on the same link --------------------------------------------------------------


def run_dbos(backend: str, host: Host, latency: float, mode: str, conc: int,
             args: argparse.Namespace) -> dict[str, Any] | None:  # fmt: skip
    """The DBOS peer as one process inside a namespace (as the harness runs it)."""
    with fresh_database(backend) as db, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable, "-m", "benchmarks.peers.dbos_saga", "--url", host.url(db.url),
            "--orders", str(args.orders), "--mix", args.mix,
            "--carrier-latency-ms", str(latency), "--json", str(out),
            "--mode", mode, "--concurrency", str(conc),
        ]  # fmt: skip
        server_before = cpu_of(server_pids(backend))
        started = time.monotonic()
        log = Path(tmp) / "log.txt"
        with open(log, "wb") as f:
            code = subprocess.run(
                host.ns.command(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT
            ).returncode
        wall = time.monotonic() - started
        server_cpu = cpu_delta(server_before, cpu_of(server_pids(backend)))
        if code != 0 or not out.exists():
            console.print(f"[red]DBOS failed[/red]: {log.read_text(errors='replace')[-800:]}")
            return None
        data = json.loads(out.read_text())
    r = RunMetrics(**{k: data[k] for k in RunMetrics.__dataclass_fields__ if k in data})
    return {
        "system": f"dbos {mode}",
        "backend": backend,
        "workers": 1,
        "concurrency": conc,
        "carrier_latency_ms": latency,
        "orders": r.orders,
        "terminal": r.terminal,
        "seconds": round(r.seconds, 3),
        "orders_per_second": round(r.orders_per_second, 1),
        "latency_ms": r.latency_ms,
        # whole process life (startup included): a lower bound of the drain's rate
        "server_cpu_cores": round(server_cpu / max(1e-9, wall), 2),
        "server_cpu_window_s": round(wall, 2),
    }


def run_plain(backend: str, host: Host, clients: str, args: argparse.Namespace
              ) -> dict[str, Any] | None:  # fmt: skip
    """`benchmarks.plain_sql` with all its clients inside one namespace (its fresh
    database made through the link too)."""
    admin = make_url(ADMIN_URLS[backend]).set(host=host.host, port=host.port)
    env = dict(os.environ, **{f"BENCH_{'POSTGRES' if backend == 'postgresql' else 'MYSQL'}_URL":
                              admin.render_as_string(False)})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plain.json"
        cmd = [
            sys.executable, "-m", "benchmarks.plain_sql", "--backend", backend,
            "--orders", str(args.orders), "--mix", args.mix, "--clients", clients,
            "--json", str(out),
        ]  # fmt: skip
        proc = subprocess.run(
            host.ns.command(cmd), cwd=REPO, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0 or not out.exists():
            console.print(f"[red]plain SQL failed[/red]: {(proc.stdout + proc.stderr)[-800:]}")
            return None
        data = json.loads(out.read_text())
    return {
        "system": "plain_sql",
        "backend": backend,
        "workers": 1,
        "concurrency": data["config"]["clients"],
        "carrier_latency_ms": 0.0,
        "orders": data["orders"],
        "terminal": data["terminal"],
        "seconds": data["seconds"],
        "orders_per_second": data["orders_per_second"],
        "latency_ms": data["latency_ms"],
        "all_client_counts": data.get("runs"),
    }


# --- output ------------------------------------------------------------------------------


def print_table(doc: dict[str, Any]) -> None:
    meta = doc["meta"]
    table = Table(
        title=(
            f"Scaling across namespaces ({meta['backend']}, link {meta['link']}, "
            f"RTT {meta['rtt_ms']:g} ms, measured SELECT 1 {meta.get('select1_ms')} ms)"
        )
    )
    for col in (
        "system", "workers", "c/worker", "carrier ms", "orders/s", "p99 ms",
        "DB server CPU (cores)", "workers CPU", "relays CPU", "machine CPU", "terminal",
    ):  # fmt: skip
        table.add_column(col, justify="right")
    for r in doc["runs"]:
        table.add_row(
            r["system"],
            str(r["workers"]),
            str(r["concurrency"]),
            f"{r['carrier_latency_ms']:g}",
            f"{r['orders_per_second']:.1f}",
            str(r["latency_ms"].get("p99")),
            str(r.get("server_cpu_cores", "")),
            str(r.get("workers_cpu_cores", "") or ""),
            str(r.get("relay_cpu_cores", "") or ""),
            str(r.get("machine_cpu_cores", "") or ""),
            f"{r['terminal']}/{r['orders']}",
        )
    console.print(table)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = doc["meta"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ours = [r for r in doc["runs"] if r["system"].startswith("ours")]
    for system, latency in sorted({(r["system"], r["carrier_latency_ms"]) for r in ours}):
        points = sorted(
            (r["workers"], r["orders_per_second"])
            for r in ours
            if r["carrier_latency_ms"] == latency and r["system"] == system
        )
        ax.plot(*zip(*points, strict=True), marker="o", label=f"{system}, carrier {latency:g} ms")
    for r in doc["runs"]:
        if not r["system"].startswith("ours"):
            ax.axhline(r["orders_per_second"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(
                f"{r['system']} (carrier {r['carrier_latency_ms']:g} ms)",
                (ax.get_xlim()[0], r["orders_per_second"]),
                fontsize=7,
                va="bottom",
            )
    ax.set_xlabel("worker processes (one network namespace each)")
    ax.set_ylabel("orders/s")
    ax.set_xticks(sorted({r["workers"] for r in ours}))
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"{meta['backend']}, {meta['rtt_ms']:g} ms RTT ({meta['link']} link), "
        f"{meta['orders']} orders, {meta['nproc']} cores",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", default="postgresql", choices=("postgresql", "mysql"))
    p.add_argument("--workers", default="1,2,4,8")
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--latencies", default="0,50", help="carrier latencies in ms")
    p.add_argument("--rtt-ms", type=float, default=1.0, help="round trip added on each link")
    p.add_argument(
        "--link",
        choices=("kernel", "relay"),
        default="kernel",
        help="kernel: netem + nftables DNAT; relay: a delaying relay process per namespace",
    )
    p.add_argument("--mix", default="success", choices=("success", "compensate10"))
    p.add_argument(
        "--stock-commit",
        default="group,step",
        help="FULFILLMENT_STOCK_COMMIT values to run our workers with, side by side",
    )
    p.add_argument("--concurrency", type=int, default=64, help="per worker, carrier latency 0")
    p.add_argument("--latency-concurrency", type=int, default=100, help="per worker, latency > 0")
    p.add_argument("--dbos", default="", help="e.g. queue:32: run the DBOS peer on the link")
    p.add_argument("--plain-clients", default="", help="e.g. 1,2,4: the plain-SQL limit")
    p.add_argument("--json", type=Path, default=Path("scaling-results.json"))
    p.add_argument("--plot", type=Path, help="write a PNG of orders/s against workers")
    return p.parse_args(argv)


def unavailable(args: argparse.Namespace) -> str | None:
    why = netns.unavailable()
    if why:
        return why
    if args.link == "kernel":
        if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
            return "`nft` (nftables) is not installed; or use --link relay"
        if args.rtt_ms > 0:
            missing = netem_missing()
            if missing:
                return f"{missing}; use --link relay (delay in a relay process) or --rtt-ms 0"
    return None


def main(argv: list[str] | None = None) -> int:
    raw = argv if argv is not None else sys.argv[1:]
    if raw[:1] == ["_relay"]:
        delay_relay(raw[1], ("127.0.0.1", int(raw[2])), float(raw[3]))
        return 0
    args = parse_args(argv)
    why = unavailable(args)
    if why:
        print(f"benchmarks.scaling: cannot run here: {why}", file=sys.stderr)
        return 2
    reason = server_reachable(args.backend)
    if reason:
        print(f"benchmarks.scaling: {reason}", file=sys.stderr)
        return 2
    workers = sorted(int(x) for x in args.workers.split(",") if x)
    latencies = [float(x) for x in args.latencies.split(",") if x]
    stock_commits = [x.strip() for x in args.stock_commit.split(",") if x.strip()]
    if not stock_commits or not set(stock_commits) <= set(STOCK_COMMITS):
        print(
            f"benchmarks.scaling: --stock-commit takes {', '.join(STOCK_COMMITS)}",
            file=sys.stderr,
        )
        return 2
    started = time.time()
    machine = environment.describe([args.backend], raw, started)
    machine.pop("command", None)
    doc: dict[str, Any] = {
        "meta": {
            "command": " ".join([".venv/bin/python -m benchmarks.scaling", *raw]),
            "backend": args.backend,
            "link": args.link,
            "rtt_ms": args.rtt_ms,
            "orders": args.orders,
            "mix": args.mix,
            "nproc": os.cpu_count(),
            "machine": machine,
        },
        "runs": [],
    }
    log_root = Path(tempfile.mkdtemp(prefix="scaling_logs_"))
    hosts = Hosts(args.link, args.backend, args.rtt_ms)
    try:
        hosts.make(max(workers))
        with fresh_database(args.backend) as probe:
            doc["meta"]["select1_ms"] = measure_rtt(hosts.hosts[0], probe.url)
        console.print(
            f"{len(hosts.hosts)} namespaces, link {args.link}, SELECT 1 from a namespace: "
            f"{doc['meta']['select1_ms']} ms (median)"
        )
        for latency, mode, n in itertools.product(latencies, stock_commits, workers):
            label = f"workers={n} carrier={latency:g} ms stock={mode}"
            console.print(f"[cyan]run[/cyan] ours {label}")
            try:
                run = run_ours(args.backend, hosts, n, latency, args, log_root, mode)
            except Exception as exc:
                console.print(f"[red]failed[/red]: {exc!r} (logs in {log_root})")
                doc.setdefault("failed", []).append(f"{label}: {exc!r}")
                continue
            doc["runs"].append(run)
            console.print(
                f"    {run['orders_per_second']} orders/s  p99 {run['latency_ms']['p99']} ms"
                f"  DB CPU {run['server_cpu_cores']} cores  workers {run['workers_cpu_cores']}"
                f"  relays {run['relay_cpu_cores']}  machine {run['machine_cpu_cores']}"
            )
            args.json.write_text(json.dumps(doc, indent=2))
        if args.dbos:
            mode, conc = args.dbos.split(":")
            for latency in latencies:
                console.print(f"[cyan]run[/cyan] DBOS {args.dbos} carrier={latency:g} ms")
                r = run_dbos(args.backend, hosts.hosts[0], latency, mode, int(conc), args)
                if r:
                    doc["runs"].append(r)
                    console.print(f"    {r['orders_per_second']} orders/s")
        if args.plain_clients:
            console.print(f"[cyan]run[/cyan] plain SQL clients={args.plain_clients}")
            r = run_plain(args.backend, hosts.hosts[0], args.plain_clients, args)
            if r:
                doc["runs"].append(r)
                console.print(f"    {r['orders_per_second']} orders/s ({r['all_client_counts']})")
    finally:
        hosts.close()
    doc["meta"]["duration_seconds"] = round(time.time() - started, 1)
    doc["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.json.write_text(json.dumps(doc, indent=2))
    print_table(doc)
    if args.plot:
        plot(doc, args.plot)
        console.print(f"plot written to [bold]{args.plot}[/bold]")
    console.print(f"JSON written to [bold]{args.json}[/bold]")
    return 1 if doc.get("failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())
