"""Where a worker spends its time: py-spy samples one `fulfillment worker` draining a backlog.

    .venv/bin/python -m benchmarks.profile_worker --backend sqlite --orders 2000
    .venv/bin/python -m benchmarks.profile_worker --backend postgresql --idle   # wall time

Places the orders (as the harness does), runs the worker under `py-spy record` (the `bench`
extra), stops it when every order is terminal, and prints the functions with the most
samples: inclusive (on the stack) and self (at the top of the stack), for the product's
own code and for everything. `--gil` keeps only the thread holding the GIL (where the CPU
goes); `--idle` also counts threads waiting (I/O, locks, sleeps).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import fresh_database, workload
from benchmarks.ours import TerminalCounter, place_all, product_env, setup_app


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _frames(stack: str) -> list[str]:
    return [f.strip() for f in stack.split(";") if f.strip()]


def summarize(raw: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = _frames(stack)
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    lines = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"\n-- {title}: top {top} of all code")
        lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
        ours = [(f, n) for f, n in counter.most_common() if "fulfillment/" in f][:top]
        lines.append(f"\n-- {title}: top {top} of fulfillment/")
        lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in ours]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql", "mysql"))
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--idle", action="store_true", help="count waiting threads too")
    parser.add_argument("--gil", action="store_true", help="only the thread holding the GIL (CPU)")
    parser.add_argument(
        "--inline-projector",
        action="store_true",
        help="profile the worker with its projector thread (default: --no-projector, as the"
        " harness runs it)",
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw (collapsed) stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with fresh_database(args.backend) as db, tempfile.TemporaryDirectory() as tmp:
        app = setup_app(db)
        place_all(app, workload(args.orders, "success"), 4)
        raw = args.raw or Path(tmp) / "raw.txt"
        cmd = [py_spy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw)]
        if args.idle:
            cmd.append("--idle")
        if args.gil:
            cmd.append("--gil")
        cmd += ["--", sys.executable, "-m", "fulfillment.entrypoints.cli", "worker"]
        cmd += ["--concurrency", str(args.concurrency), "--no-migrate"]
        if not args.inline_projector:
            cmd += ["--no-projector"]
        env = product_env(db, 0.0)
        with open(Path(tmp) / "worker.log", "wb") as log:
            spy = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            counter = TerminalCounter(app)
            started = time.monotonic()
            while counter.poll() < args.orders and spy.poll() is None:
                time.sleep(0.2)
            seconds = time.monotonic() - started
            # The worker is py-spy's child: stop it, and py-spy writes its file and exits.
            for child in _children(spy.pid):
                os.kill(child, signal.SIGTERM)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=30)
        app.close()
        print(
            f"{args.orders} orders in {seconds:.1f} s ({args.orders / seconds:.1f}/s, under py-spy)"
        )
        print(summarize(raw, args.top))


if __name__ == "__main__":
    main()
