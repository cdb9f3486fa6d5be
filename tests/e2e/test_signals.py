"""A stop signal never deadlocks the process it stops (entrypoints/signals.py).

The signal arrives while the main thread holds the lock of the very `threading.Event`
that `stop` sets, as it does inside the worker loop's `Event.wait`: a handler that set
the event itself would wait for its own thread forever. Real signals, in a child process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from fulfillment.entrypoints.signals import stop_on_signals

    stopped = threading.Event()
    stop_on_signals("test", stopped.set)
    with stopped._cond:  # held by this (main) thread, as inside Event.wait or clear
        os.kill(os.getpid(), int(sys.argv[1]))
        time.sleep(0.3)  # the handler runs here, on this thread, with the lock held
        print("handler returned", flush=True)
    print("stopped" if stopped.wait(10) else "not stopped", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_arriving_while_the_main_thread_holds_the_stop_lock(signum: int) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(int(signum))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["handler", "returned", "stopped"]
