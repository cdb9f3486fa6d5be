"""One worker in this process drains a backlog: orders/s and CPU per order, nothing else.

    .venv/bin/python -m benchmarks.inprocess --backend postgresql --orders 3000

The quickest way to see what a change to the worker's path costs or saves: no worker
process to start, no projector, no peers. The orders are placed first (as the harness
does), then `Worker(app, concurrency).run(until_idle=True)` is timed; logging is set up as
`fulfillment worker` sets it up (JSON at INFO, to /dev/null). The figures are higher than
the harness's, which shares the two cores with a projector process; compare them with
each other, on the same machine, a few runs each (PostgreSQL varies by about 10%).
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import fresh_database, workload
from benchmarks.ours import place_all, setup_app
from fulfillment.entrypoints.worker import Worker
from fulfillment.observability.logging import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "mysql"), default="sqlite")
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--mix", choices=("success", "compensate10"), default="success")
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull:
        configure_logging(True, "INFO", stream=devnull)
        with fresh_database(args.backend) as db:
            app = setup_app(db)
            try:
                place_all(app, workload(args.orders, args.mix), 4)
                started, cpu = time.perf_counter(), time.process_time()
                Worker(app, args.concurrency).run(until_idle=True, timeout=600)
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                groups = [
                    f"{name} {g.committed_steps / max(1, g.commits):.1f}"
                    for name, g in (("main", app.group), ("stock", app.stock_group))
                    if g is not None
                ]
            finally:
                app.close()
    print(
        f"{args.backend}: {args.orders} orders in {elapsed:.2f} s = "
        f"{args.orders / elapsed:.0f} orders/s; CPU {1000 * cpu / args.orders:.2f} ms per order"
        + (f"; steps per group: {', '.join(groups)}" if groups else "")
    )


if __name__ == "__main__":
    main()
