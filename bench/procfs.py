"""Server-side figures from /proc: resident memory, CPU time and open file descriptors by PID.

:func:`sample` reads every process of a :meth:`bench.peers.Peer.roles` mapping at one moment;
:func:`delta` subtracts two samples. Sizes are KiB (``VmRSS`` of /proc/<pid>/status), CPU is
seconds (``utime + stime`` of /proc/<pid>/stat), descriptors are the entries of /proc/<pid>/fd.
A process that is gone reads as zero.
"""

from __future__ import annotations

import os
import time
import typing as t
from pathlib import Path

__all__ = ["Sample", "cpu_seconds", "delta", "fd_count", "pss_kib", "rss_kib", "sample", "wakeups"]

_TICKS = os.sysconf("SC_CLK_TCK")

#: ``{role: {"rss_kib": ..., "cpu_s": ..., "fds": ..., "pids": [...]}}`` plus ``"at"`` (Unix time).
Sample = dict[str, t.Any]


def _status(pid: int, field: str) -> int:
    """The number of ``field`` in /proc/<pid>/status (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 if it is gone)."""
    return _status(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB: its resident pages, each shared one divided by
    the processes sharing it (0 if it is gone). Summed over a server's processes it is the
    memory they hold together, pages shared after a fork counted once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def wakeups(pid: int) -> int:
    """Times ``pid`` went to sleep and woke so far: its voluntary context switches (0 if it is gone)."""
    return _status(pid, "voluntary_ctxt_switches")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid`` (0 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(roles: t.Mapping[str, t.Sequence[int]]) -> Sample:
    """RSS, CPU and descriptors of each role's processes, summed per role and over ``"all"``."""
    out: Sample = {"at": time.time()}
    every: list[int] = []
    for role, pids in roles.items():
        out[role] = _figures(pids)
        every += pids
    out["all"] = _figures(every)
    return out


def _figures(pids: t.Sequence[int]) -> dict[str, t.Any]:
    return {
        "rss_kib": sum(rss_kib(pid) for pid in pids),
        "cpu_s": sum(cpu_seconds(pid) for pid in pids),
        "fds": sum(fd_count(pid) for pid in pids),
        "pids": list(pids),
    }


def delta(before: Sample, after: Sample, role: str, key: str) -> float:
    """``after[role][key] - before[role][key]`` (0 for a role either sample lacks)."""
    if role not in before or role not in after:
        return 0.0
    return float(after[role][key] - before[role][key])
