"""Who owns a lock or a staging folder: ``pid host start``, robust to pid reuse.

``start`` is the process's start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot,
plus the boot id where the kernel has one), or ``-`` where ``/proc`` is unavailable. A pid that is
alive but started at another time is another process (the pid was reused after a kill -9 or a
container restart), so the owner is gone.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

NO_START = "-"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()[:8]
    except OSError:
        return ""


def start_token(pid: int) -> str:
    """``<boot id>:<start ticks>`` of process ``pid``, ``-`` when unknown (no /proc, or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return NO_START
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    if len(fields) < 20:
        return NO_START
    return f"{_boot_id()}:{fields[19]}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host and is not a zombie (ended, not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: the signal test is all there is
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def owner_line(pid: int | None = None) -> str:
    """``pid host start`` of this process (or of ``pid``)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid} {socket.gethostname()} {start_token(pid)}"


def parse_owner(text: str) -> tuple[int, str, str] | None:
    """``(pid, host, start)`` of an owner line (``start`` is ``-`` for an old two-field line); None when malformed."""
    parts = text.split()
    if len(parts) not in (2, 3) or not parts[0].isascii() or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1], parts[2] if len(parts) == 3 else NO_START


def process_started_at(pid: int) -> float | None:
    """Start time of ``pid`` as a time.time() value (None without /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rfind(")") + 2:].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def owner_gone(text: str, written_at: float | None = None) -> bool | None:
    """Whether the owner named by ``text`` no longer runs on this host.

    True: its pid is gone, or alive but started at another time than the owner line says (pid
    reuse), or (an old line without a start time) it started after ``written_at``, the time the
    line was last written. False: it runs. None: malformed, or another host's (not judged here).
    """
    parsed = parse_owner(text)
    if parsed is None:
        return None
    pid, host, start = parsed
    if host != socket.gethostname():
        return None
    if pid == os.getpid():
        return text.split() != owner_line().split()  # an earlier process that had this pid
    if not pid_alive(pid):
        return True
    now = start_token(pid)
    if start != NO_START and now != NO_START:
        return start != now
    began = process_started_at(pid)
    return began is not None and written_at is not None and began > written_at + 1.0


def describe(text: str, age_s: float | None) -> str:
    """``pid 123 on host h, refreshed 40 s ago`` for messages (``text``: an owner line)."""
    parsed = parse_owner(text)
    age = "" if age_s is None else f", last refreshed {_fmt_age(age_s)} ago"
    if parsed is None:
        return f"unreadable owner {text.strip()[:40]!r}{age}"
    return f"pid {parsed[0]} on {parsed[1]}{age}"


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def file_age(path: Path) -> float | None:
    """Seconds since ``path`` was last modified (None when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
