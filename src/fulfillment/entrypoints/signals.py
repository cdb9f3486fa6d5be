"""SIGTERM and SIGINT stop a long-running command, from a thread of their own.

A Python signal handler runs on the main thread between two bytecodes, possibly while
that thread holds a lock the handler's work needs: the worker's main loop waits on a
`threading.Event`, whose `wait`, `set` and `clear` take the event's non-reentrant lock,
so a handler calling `set()` at the wrong moment waited for itself forever (a worker
that never exited after SIGTERM; see CPython gh-126434 and the `signal` module's note
on handlers and threads). So the handler only writes the signal's number to a pipe,
which takes no lock, and a watcher thread reads it and calls `stop` as ordinary code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals(logger: str, stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call `stop` on a watcher thread (call from the main thread)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    log = logging.getLogger(f"fulfillment.{logger}")

    def watch() -> None:
        while received := os.read(read_fd, 1):
            log.info("signal %d: stopping", received[0])
            stop()

    def handler(signum: int, _frame: FrameType | None) -> None:
        # A full pipe holds signals the watcher has yet to read: one more changes nothing.
        with contextlib.suppress(BlockingIOError):
            os.write(write_fd, bytes([signum]))

    threading.Thread(target=watch, name="signals", daemon=True).start()
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
