"""Waiting and background work that is right for the server we run under.

Under ``gunicorn -k gevent`` the worker has monkey-patched the standard library
before the app is imported, and we use gevent's own primitives (cheaper than
patched ``threading`` ones; a stream costs one greenlet, not one thread). Under
any other server (``flask run``, the test client, a sync worker) we use real
threads. Nothing else in the package needs to know which one it is.
"""

from __future__ import annotations

import os
import threading
import typing as t

__all__ = [
    "Batcher",
    "Event",
    "Handle",
    "Task",
    "call_later",
    "gevent_active",
    "new_event",
    "pid",
    "spawn",
    "spawn_later",
    "start_thread",
    "thread_lock",
    "watch_fd",
]


_patched = False

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """This process's id, kept up to date across forks.

    ``os.getpid`` is a system call each time (glibc caches nothing); stores and the
    node compare it on every call to notice a fork, so this is read from a variable.
    """
    return _pid


def gevent_active() -> bool:
    """Whether gevent has patched this process (as gunicorn's gevent worker does).

    A process is never unpatched again, so a yes is remembered (this is asked on
    every stream).
    """
    global _patched
    if _patched:
        return True
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    _patched = bool(monkey.is_module_patched("threading"))
    return _patched


class Event(t.Protocol):
    """**Protocol:** the part of ``threading.Event`` we use."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def new_event() -> Event:
    """A new event of the right kind for this process."""
    if gevent_active():
        import gevent.event

        event: Event = gevent.event.Event()
        return event
    return threading.Event()


class Task(t.Protocol):
    """**Protocol:** work running in the background (a greenlet or a thread)."""

    def join(self, timeout: float | None = None) -> t.Any: ...


def spawn(func: t.Callable[[], object], name: str) -> Task:
    """Run ``func`` in the background (a greenlet under gevent, else a daemon thread)."""
    if gevent_active():
        import gevent

        greenlet: Task = gevent.spawn(func)
        greenlet.name = name  # type: ignore[attr-defined]
        return greenlet
    thread = threading.Thread(target=func, name=name, daemon=True)
    thread.start()
    return thread


def spawn_later(delay: float, func: t.Callable[[], object], name: str) -> None:
    """Run ``func`` after ``delay`` seconds in the background."""
    if gevent_active():
        import gevent

        gevent.spawn_later(delay, func).name = name
        return
    timer = threading.Timer(delay, func)
    timer.name = name
    timer.daemon = True
    timer.start()


def start_thread(func: t.Callable[[], object], name: str) -> None:
    """Run ``func`` in a real OS thread, under gevent too (for blocking work that releases the GIL).

    ``func`` must not touch gevent objects or patched locks; it waits on a
    :func:`thread_lock`.
    """
    if gevent_active():
        from gevent import monkey

        monkey.get_original("_thread", "start_new_thread")(func, ())
        return
    threading.Thread(target=func, name=name, daemon=True).start()


def thread_lock() -> threading.Lock:
    """A real OS lock, also under gevent: to wait in (and wake) a thread of :func:`start_thread`.

    Blocking on it in the event loop's thread blocks the whole loop.
    """
    if gevent_active():
        from gevent import monkey

        lock: threading.Lock = monkey.get_original("_thread", "allocate_lock")()
        return lock
    return threading.Lock()


class Handle(t.Protocol):
    """**Protocol:** a pending call or a watcher; ``close()`` cancels it."""

    def close(self) -> None: ...


class _ThreadTimer(threading.Timer):
    def close(self) -> None:
        self.cancel()


def call_later(delay: float, func: t.Callable[[], object]) -> Handle:
    """Call ``func`` after ``delay`` seconds; ``close()`` the result to cancel.

    Under gevent this is a bare timer of the event loop (no greenlet, a few
    hundred bytes): ``func`` runs in the loop itself, so it must not block.
    """
    if gevent_active():
        import gevent

        timer: Handle = gevent.get_hub().loop.timer(max(0.0, delay))
        timer.start(func)  # type: ignore[attr-defined]
        return timer  # its close() stops it too
    thread = _ThreadTimer(max(0.0, delay), func)
    thread.daemon = True
    thread.start()
    return thread


def watch_fd(fd: int, *, write: bool, func: t.Callable[[], object]) -> Handle:
    """Call ``func`` whenever ``fd`` is readable (or writable); ``close()`` the result to stop.

    gevent only: a bare watcher of the event loop (no greenlet), and ``func``
    runs in the loop itself, so it must not block.
    """
    import gevent

    watcher: Handle = gevent.get_hub().loop.io(fd, 2 if write else 1)
    watcher.start(func)  # type: ignore[attr-defined]
    return watcher  # its close() stops it too


Q = t.TypeVar("Q")
R = t.TypeVar("R")


class Batcher(t.Generic[Q, R]):
    """Under gevent, requests that arrive together are run as one batch; elsewhere each alone.

    Why our own code: a store's commit costs about the same for one notice as for fifty, and a
    worker under load has many publishing greenlets ready at once. The first request of a
    round yields to the event loop once (``gevent.sleep(0)``), so that every greenlet ready at
    that moment reaches :meth:`submit` too, then runs them all with one ``run`` and hands each
    its own result (or exception). With nothing else ready, that is one pass of the loop.

    :param run: runs a batch; returns one result or exception per request, in order.
    """

    def __init__(self, run: t.Callable[[list[Q]], list[R | BaseException]]) -> None:
        self._run = run
        self._queue: list[tuple[Q, t.Any]] = []
        self._leader = False
        self._pid = -1

    def submit(self, request: Q) -> R:
        """Run ``request`` in a batch with those that arrive meanwhile; return its result, or raise."""
        if not gevent_active():
            return self._one(self._run([request])[0])
        import gevent
        import gevent.event

        if self._pid != pid():  # a forked child starts with no round of its parent's
            self._queue, self._leader, self._pid = [], False, pid()
        waiter = gevent.event.AsyncResult()
        self._queue.append((request, waiter))
        if not self._leader:
            self._leader = True
            try:
                try:
                    gevent.sleep(0)  # the greenlets ready now queue their requests
                finally:
                    while self._queue:  # (also if this greenlet is killed meanwhile)
                        self._drain()
            finally:
                self._leader = False
        return self._one(waiter.get())

    def _drain(self) -> None:
        batch, self._queue = self._queue, []
        try:
            results = self._run([request for request, _ in batch])
        except BaseException as exc:  # every waiter gets it
            results = [exc] * len(batch)
        for (_, waiter), result in zip(batch, results, strict=True):
            waiter.set(result)

    @staticmethod
    def _one(result: R | BaseException) -> R:
        if isinstance(result, BaseException):
            raise result
        return result
