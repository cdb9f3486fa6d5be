"""The machine and versions a benchmark ran on, for the JSON file and docs/performance.md."""

from __future__ import annotations

import os
import platform
import sqlite3
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from benchmarks.common import server_reachable, server_version

PACKAGES = (
    "fulfillment-saga",
    "sqlalchemy",
    "psycopg",
    "pymysql",
    "dbos",
    "eventsourcing",
    "psutil",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}{' (src modified)' if dirty else ''}" if head else None


def describe(backends: list[str], argv: list[str], started: float) -> dict[str, Any]:
    servers = {}
    for backend in backends:
        if server_reachable(backend) is None:
            try:
                servers[backend] = server_version(backend)
            except Exception as exc:  # a version is nice to have, never worth failing for
                servers[backend] = f"unknown ({exc})"
    return {
        "command": " ".join([".venv/bin/python -m benchmarks.harness", *argv]),
        "git_revision": _git_revision(),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "servers": servers,
        "sqlite_library": sqlite3.sqlite_version,
        "packages": {name: _package(name) for name in PACKAGES},
        "product_settings": {
            "FULFILLMENT_SQLITE_SYNCHRONOUS": os.environ.get(
                "FULFILLMENT_SQLITE_SYNCHRONOUS", "FULL"
            ),
            "FULFILLMENT_POLL_INTERVAL_SECONDS": os.environ.get(
                "FULFILLMENT_POLL_INTERVAL_SECONDS", "0.05"
            ),
            "FULFILLMENT_PHI_ENCRYPTION": os.environ.get("FULFILLMENT_PHI_ENCRYPTION", "on"),
        },
    }
