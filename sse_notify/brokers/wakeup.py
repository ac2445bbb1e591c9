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

**The directory is private.** It is ``$TMPDIR/sse-notify-<hash of the database
path>``, made with mode 0700. Before use, its owner and mode are checked: it must
be a real directory (not a link) of the user the server runs as, open to nobody
else. Anyone who could write there could plant sockets or swallow wake-ups. If
another user owns it, the server says so in its log and uses a directory of its
own beside the database instead (reached through ``/proc/self/fd`` when its path
is too long for a socket: Unix socket paths must stay under 108 bytes); if even
that is not possible, it wakes nobody and the feeds poll
(``SSE_NOTIFY_POLL_INTERVAL``), which loses nothing but speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading

from ..concurrency import pid

__all__ = ["WakeChannel", "private_directory"]

log = logging.getLogger("sse_notify.brokers.wakeup")

#: The longest socket path a Unix socket takes (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: What a socket's file name adds to the directory: ``/<pid>-<8 hex>.sock``.
_NAME_ROOM = len("/4194304-0123abcd.sock")


def private_directory(path: str) -> str | None:
    """Make ``path`` (mode 0700) if needed; ``None`` if it is fine to use, else what is wrong with it.

    Fine means a real directory (not a symbolic link) owned by this process's user, with
    no permission for group or others. One owned by this user but open to others is closed
    (chmod 0700) rather than refused.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot be made: {exc}"
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be read: {exc}"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != os.geteuid():
        return f"is owned by uid {info.st_uid}, not by this server's user (uid {os.geteuid()})"
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            return f"is open to other users (mode {stat.S_IMODE(info.st_mode):o}) and cannot be closed: {exc}"
    return None


def _directories(key: str) -> list[str]:
    """Where the sockets of the database ``key`` may live, in order of preference."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return [
        os.path.join(tempfile.gettempdir(), f"sse-notify-{digest}"),
        os.path.join(os.path.dirname(os.path.abspath(key)), f".sse-notify-wake-{digest[:8]}"),
    ]


def _directory_for(key: str) -> str | None:
    """The first usable private directory for ``key``'s sockets (logged when it is not the first)."""
    first, *others = _directories(key)
    problem = private_directory(first)
    if problem is None:
        return first
    for other in others:
        if private_directory(other) is None:
            log.error(
                "the wake-up directory %s %s: another user may be trying to intercept this server's "
                "wake-ups. Using %s instead; remove %s or find out who made it.",
                first,
                problem,
                other,
                first,
            )
            return other
    log.error(
        "the wake-up directory %s %s, and no private directory beside the database is usable "
        "either: workers will not wake each other, and notices from another worker arrive within "
        "SSE_NOTIFY_POLL_INTERVAL instead of at once.",
        first,
        problem,
    )
    return None


class WakeChannel:
    """A set of processes interested in one database, each woken by a datagram."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._directory: str | None = None
        #: What socket paths start with: the directory, or ``/proc/self/fd/<n>`` for a long one.
        self._prefix: str | None = None
        self._directory_fd = -1
        self._checked = -1  # the pid that checked the directory
        self._lock = threading.Lock()
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self._path: str | None = None
        self._pid = -1

    @property
    def directory(self) -> str | None:
        """Where the sockets are (``None``: nowhere private, so no wake-ups); checked once per process."""
        self._check()
        return self._directory

    def _check(self) -> str | None:
        """Find the directory (once per process); return the prefix of socket paths in it."""
        if self._checked == pid():
            return self._prefix
        self._checked = pid()
        directory = self._directory = _directory_for(self.key)
        self._prefix = directory
        if directory is not None and len(directory) + _NAME_ROOM > MAX_SOCKET_PATH:
            # Too long for a socket path: reach it through a descriptor of its own.
            try:
                self._directory_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self._prefix = f"/proc/self/fd/{self._directory_fd}"
            except (OSError, AttributeError) as exc:
                log.error(
                    "the wake-up directory %s is too long for a socket path (%s): no wake-ups", directory, exc
                )
                self._directory = self._prefix = None
        return self._prefix

    def _send_socket(self) -> socket.socket:
        sender = self._sender
        if sender is not None and self._pid == pid():
            return sender
        with self._lock:  # publishers in several threads share one socket
            if self._sender is None or self._pid != pid():
                self._pid = pid()
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            return self._sender

    def wake_all(self, *, skip_own: bool = False) -> None:
        """Wake every listening process (this one too, unless ``skip_own``)."""
        prefix = self._check()
        if prefix is None:
            return
        try:
            names = os.listdir(prefix)
        except FileNotFoundError:
            return
        if not names:
            return
        sender = self._send_socket()
        own = os.path.basename(self._path) if skip_own and self._path else None
        for name in names:
            if name == own:
                continue
            path = f"{prefix}/{name}"
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
        """Bind this process's socket so :meth:`wait` can be woken (if there is a private directory)."""
        prefix = self._check()
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if prefix is None:
            self._receiver = receiver  # never woken: wait() only times out
            return
        path = f"{prefix}/{pid()}-{secrets.token_hex(4)}.sock"
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
        """Stop listening (waking a :meth:`wait` in progress), remove this process's socket and the sender."""
        if self._path is not None and self._receiver is not None:
            with contextlib.suppress(OSError):
                self._send_socket().sendto(b"!", self._path)
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
        if self._directory_fd >= 0 and self._checked == pid():
            os.close(self._directory_fd)
            self._directory_fd, self._checked = -1, -1
