"""How mailmag stops on SIGTERM and SIGINT (mailmag.scheduling.signals): never by a signal handler that
takes a lock, which left a sending process ignoring SIGTERM and outliving `mailmag run`."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

from mailmag.scheduling.signals import stop_on_signals

# A deadlocked script fails the test, not the suite: it is killed after this long.
TIMEOUT = 20


def _run(script: str) -> str:
    """`script`'s stdout; it must exit 0 within TIMEOUT seconds."""
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                              text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"no end after {TIMEOUT} s (deadlocked?):\n{exc.stderr!r}") from None
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_stop_that_arrives_while_its_event_is_locked_still_stops():
    """`kill -9` of `mailmag run --processes 2` left a sending process that ignored every SIGTERM:
    its handler called Event.set() while the main thread held that Event's lock (the handler runs
    in the main thread, between two bytecodes), and waited for ever, as did each SIGTERM's after
    it. Here SIGTERM arrives twice while the script holds `stop`'s lock: with such a handler the
    script never ends; with stop_on_signals `stop` is set once the lock is free."""
    out = _run("""
        import os, signal, threading
        from mailmag.scheduling.signals import stop_on_signals

        stop, seen = threading.Event(), []

        def on_stop(sig):
            seen.append(sig.name)
            stop.set()

        with stop_on_signals(on_stop):
            with stop._cond:  # what Event.set() and Event.wait() take, held as a handler would find it
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
                total = sum(range(1000))  # more bytecodes, for a handler to run between
                locked = stop.is_set()  # reads the flag without the lock
            unlocked = stop.wait(5)
        print(locked, unlocked, sorted(set(seen)))
    """)
    assert out == "False True ['SIGTERM']"  # not set while locked, set once unlocked


def test_the_handlers_before_are_back_after_it():
    """After `worker` or `run` has stopped, SIGINT and SIGTERM do what they did before (Ctrl-C in a
    test or in a program that calls mailmag); the thread that relayed them has ended."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals(lambda sig: None):
        inside = {sig: signal.getsignal(sig) for sig in before}
    assert all(inside[sig] is not before[sig] for sig in before)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert not [t for t in threading.enumerate() if t.name == "mailmag-signals"]


def test_a_stop_reaches_the_caller_once_per_signal():
    """SIGINT then SIGTERM: `worker` says "stopping (SIGINT)" and "stopping (SIGTERM)", each
    from on_stop, all said before the block is left."""
    out = _run("""
        import os, signal, threading
        from mailmag.scheduling.signals import stop_on_signals

        seen = []
        with stop_on_signals(lambda sig: seen.append(sig.name)):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(0.2)
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(0.2)
        print(seen)
    """)
    assert out == "['SIGINT', 'SIGTERM']"


def test_a_process_forked_inside_does_not_hold_the_block_open():
    """`run --processes 2` forks its sending processes inside stop_on_signals: they must not keep
    its pipe open, or `run` would wait at its end for them to end as well."""
    out = _run("""
        import multiprocessing, os, signal, time
        from mailmag.scheduling.signals import stop_on_signals

        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        with stop_on_signals(lambda sig: None):
            child.start()
            leaving = time.monotonic()
        took = time.monotonic() - leaving
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        print(took < 5)
    """)
    assert out == "True"
