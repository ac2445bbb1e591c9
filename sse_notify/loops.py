"""The background loops of a process's hub, one small class each; :class:`~sse_notify.node.Node` runs them.

- :class:`Heartbeats`: a heartbeat to every stream that had nothing written lately.
- :class:`Housekeeping`: closes streams whose writes are stuck, and runs the store's
  retention sweep.
- :class:`PresenceWriter`: writes this worker's stream counts to the store.
- :class:`DueWork`: claims what fell due in the store's scheduler and does it.

Each is one greenlet (or thread) per process, not a timer per stream. :meth:`Loop.stop`
ends it at its next step.
"""

from __future__ import annotations

import logging
import math
import time
import typing as t
import weakref

from . import telemetry
from .concurrency import spawn
from .errors import BrokerClosed, BrokerError
from .presence import LIFETIME_INTERVALS

if t.TYPE_CHECKING:
    from .brokers import Broker
    from .hub import Hub
    from .schedule import Due

__all__ = ["DueWork", "Heartbeats", "Housekeeping", "Loop", "PresenceWriter"]

log = logging.getLogger("sse_notify.loops")


class Loop:
    """A loop that runs in the background of a process until :meth:`stop`."""

    #: The greenlet's (or thread's) name.
    name = "sse-notify-loop"

    def __init__(self) -> None:
        self.stopped = False

    def start(self) -> None:
        """Run :meth:`run` in the background."""
        self.stopped = False
        spawn(self.run, name=self.name)

    def stop(self) -> None:
        """End the loop at its next step."""
        self.stopped = True

    def run(self) -> None:
        """The loop itself: returns once :attr:`stopped`."""
        raise NotImplementedError


class Heartbeats(Loop):
    """Every ``interval``, a heartbeat to each stream that had nothing written since the last one.

    One loop for every stream of the process (not a timer per stream): every step
    it visits the next slice of the streams, so each is visited once per interval
    and the writes are spread over it instead of arriving as one burst. Short steps
    keep each slice small: 10,000 streams at a 5 s heartbeat are 200 writes (about
    2 ms) every 0.1 s, not a 20 ms pause every second. A round's list holds weak
    references: a stream that ends during the round is freed at once.
    """

    name = "sse-notify-heartbeats"

    def __init__(self, hub: Hub, interval: float) -> None:
        super().__init__()
        self.hub = hub
        self.interval = interval

    def run(self) -> None:
        """Visit every stream once per interval, in slices."""
        step = min(0.1, self.interval / 4)
        while not self.stopped:
            batch = [weakref.ref(stream) for stream in self.hub.streams]
            started = time.monotonic()
            done = 0
            while not self.stopped:
                time.sleep(step)
                elapsed = time.monotonic() - started
                upto = (
                    len(batch)
                    if elapsed >= self.interval
                    else math.ceil(len(batch) * elapsed / self.interval)
                )
                for i in range(done, upto):
                    stream = batch[i]()
                    if stream is not None:
                        stream.heartbeat()
                stream = None
                done = upto
                if elapsed >= self.interval:
                    break


class Housekeeping(Loop):
    """Closes streams whose writes are stuck past ``send_timeout``; sweeps retention now and then."""

    name = "sse-notify-housekeeping"

    def __init__(self, hub: Hub, broker: Broker, send_timeout: float, sweep_interval: float) -> None:
        super().__init__()
        self.hub = hub
        self.broker = broker
        self.send_timeout = send_timeout
        self.sweep_interval = sweep_interval

    def run(self) -> None:
        """Check the writers every tick; sweep now and then."""
        last_sweep = time.monotonic()
        tick = max(0.2, min(5.0, self.send_timeout / 4))
        while not self.stopped:
            time.sleep(tick)
            now = time.monotonic()
            self.abort_stuck_writers(now)
            if now - last_sweep >= self.sweep_interval:
                last_sweep = now
                self.sweep()

    def abort_stuck_writers(self, now: float) -> None:
        """Evict and abort every stream (and evicted stream) whose write is stuck past the timeout."""
        hub = self.hub
        for stream in list(hub.streams):
            since = stream.writing_since
            if since and now - since > self.send_timeout:
                hub.evict(stream, "send timeout")
                hub.evicted_writers.discard(stream)
                stream.abort()
                stream.writing_since = 0.0
        for stream in list(hub.evicted_writers):
            since = stream.writing_since
            if not since:
                hub.evicted_writers.discard(stream)  # it finished its write
            elif now - since > self.send_timeout:
                hub.evicted_writers.discard(stream)
                stream.abort()

    def sweep(self) -> None:
        """Drop notices past the retention age (a failure is counted, and tried again next time)."""
        try:
            dropped = self.broker.trim_expired()
        except BrokerError as exc:
            telemetry.store_failed("sweep", exc)
            return
        except Exception:
            log.exception("retention sweep failed")
            return
        if dropped:
            log.info("retention dropped %d expired notices", dropped)


class PresenceWriter(Loop):
    """Every ``interval``, this worker's changed stream counts to the store (renewing its lifetime)."""

    name = "sse-notify-presence"

    def __init__(self, hub: Hub, broker: Broker, interval: float) -> None:
        super().__init__()
        self.hub = hub
        self.broker = broker
        self.interval = interval
        #: This process's name in the store's presence records (set when the node starts).
        self.worker_id = ""

    def run(self) -> None:
        """Write every interval until stopped, or until the store is closed."""
        while not self.stopped:
            time.sleep(self.interval)
            if not self.stopped and not self.write():
                return  # the store was closed: this process is done with it

    def write(self) -> bool:
        """Write this worker's changed stream counts to the store; ``False`` once the store is closed."""
        counts = self.hub.take_changed()
        try:
            self.broker.presence_update(self.worker_id, counts, self.interval * LIFETIME_INTERVALS)
        except BrokerClosed:
            return False
        except BrokerError as exc:
            self.hub.changed |= set(counts)  # written with the next round
            telemetry.store_failed("presence", exc)
        return True

    def leave(self) -> None:
        """Remove this worker's records now (it stops); a failure leaves them to expire."""
        if not self.worker_id:
            return
        try:
            self.broker.presence_leave(self.worker_id)
        except BrokerError as exc:
            telemetry.store_failed("presence", exc)


class DueWork(Loop):
    """Every ``interval``, claims what fell due in the store's scheduler and does it (``schedule.py``).

    Every worker runs one, and the store gives each due entry to one claim at a time. An
    action is given its entry and must be idempotent: one that fails (or a worker killed
    after it) leaves the entry to fall due again after ``lease`` seconds, when a worker
    does it again. Entries done are forgotten in one call per round.
    """

    name = "sse-notify-due"

    #: Entries claimed per round (more wait for the next round, at once).
    BATCH = 200
    #: The longest wait between rounds while the store fails (seconds).
    MAX_BACKOFF = 5.0

    def __init__(self, broker: Broker, interval: float, lease: float) -> None:
        super().__init__()
        self.broker = broker
        self.interval = interval
        self.lease = lease
        #: What to do with an entry, by its kind (the service registers them).
        #: What to do per kind. An action that returns ``False`` has handed the entry on (to a
        #: greenlet that calls ``broker.finish`` itself, or to the end of its lease); any other
        #: return forgets it.
        self.actions: dict[str, t.Callable[[Due], bool | None]] = {}

    def run(self) -> None:
        """Claim and do what is due, every interval (at once again after a full batch).

        While the store fails, the wait doubles up to :data:`MAX_BACKOFF` seconds (one
        warning each time, not four a second).
        """
        wait = self.interval
        while not self.stopped:
            try:
                full = self.step()
            except BrokerClosed:
                return  # the store was closed: this process is done with it
            except BrokerError as exc:
                telemetry.store_failed("schedule", exc)
                time.sleep(wait)
                wait = min(self.MAX_BACKOFF, wait * 2)
                continue
            wait = self.interval
            if not full:
                time.sleep(self.interval)

    def step(self, now: float | None = None) -> bool:
        """One round: claim what is due, do it, forget what was done; whether the batch was full."""
        claimed = self.broker.claim_due(time.time() if now is None else now, self.BATCH, self.lease)
        done: list[Due] = []
        for due in claimed:
            action = self.actions.get(due.kind)
            if action is None:
                continue  # a kind of a newer version: its lease ends and a worker that knows it does it
            try:
                finished = action(due)
            except Exception:
                log.exception("scheduled %s %r failed; tried again in %.0f s", due.kind, due.key, self.lease)
                continue
            if finished is not False:  # False: the action finishes it itself (see ``actions``)
                done.append(due)
        if done:
            self.broker.finish(done)
        return len(claimed) == self.BATCH
