"""Cross-process wake-ups for the SQLite store, with no server to run.

Why our own code: SQLite has no LISTEN/NOTIFY, and polling the database from
every worker every few milliseconds costs CPU at rest and still adds the poll
interval to every delivery. Instead each process that holds a feed binds one
Unix datagram socket in a per-database directory; a publisher, after its
transaction commits, sends one byte to every socket there. The feed wakes at
once, reads the new rows by cursor, and goes back to sleep. A datagram that
cannot be sent (receiver's buffer full) is dropped on purpose: that receiver
is already awake. A slow safety poll in the feed covers anything else (a
process that started between a listing and a send, a full directory).

Sockets of dead processes (kill -9) refuse datagrams and are removed by the
next publisher that meets them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import tempfile

__all__ = ["WakeChannel"]


def _directory_for(key: str) -> str:
    # Unix socket paths are limited to 107 bytes: keep them short and out of
    # the (possibly deep) instance folder.
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"sse-notify-{digest}")


class WakeChannel:
    """A set of processes interested in one database, each woken by a datagram."""

    def __init__(self, key: str) -> None:
        self.directory = _directory_for(key)
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self._path: str | None = None
        self._pid = -1

    def _send_socket(self) -> socket.socket:
        if self._sender is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        return self._sender

    def wake_all(self, *, skip_own: bool = False) -> None:
        """Wake every listening process (this one too, unless ``skip_own``)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        sender = self._send_socket()
        own = os.path.basename(self._path) if skip_own and self._path else None
        for name in names:
            if name == own:
                continue
            path = os.path.join(self.directory, name)
            try:
                sender.sendto(b"!", path)
            except BlockingIOError:
                pass  # its buffer is full of wake-ups already
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its process is gone
            except OSError:
                pass

    def listen(self) -> None:
        """Bind this process's socket so :meth:`wait` can be woken."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(4)}.sock")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        self._receiver, self._path = receiver, path

    def wait(self, timeout: float) -> bool:
        """Block (cooperatively under gevent) until woken or ``timeout``; drain wake-ups."""
        receiver = self._receiver
        if receiver is None:  # closed
            return False
        try:
            receiver.settimeout(timeout)
            receiver.recv(16)
            receiver.settimeout(0.0)
        except OSError:  # timed out (TimeoutError), or closed meanwhile
            return False
        with contextlib.suppress(OSError):
            while receiver.recv(16):
                pass
        return True

    def close(self) -> None:
        """Stop listening, remove this process's socket, close the sending one."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            self._path = None
