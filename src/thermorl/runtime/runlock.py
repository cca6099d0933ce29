"""One writer per run directory: ``RUN/.lock``, held while a process trains in ``RUN``.

The lock is a POSIX record lock (``fcntl.lockf``) on ``RUN/.lock``. The kernel drops it when the
holder exits in any way, ``kill -9`` included, so a lock file left behind never blocks a later
``--resume``: the file's content only says who held it last. A holder that ends normally removes
the file (a failed ``--resume`` leaves the run directory as it was). POSIX locks belong to the process and
are not inherited by forked children (a reward worker pool cannot keep a dead run locked). They
do not exclude the holder's own process, and closing any descriptor of the file drops them, so
this module remembers the directories its process holds and never reopens a held lock file.
A data-parallel group is one writer: process 0 takes the lock for all of them (``trainer``).
The holder writes its pid, host, start time and command line into the file, so a second
``thermorl train`` exits with one line naming it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from thermorl.errors import ThermoRLError

LOCK_NAME = ".lock"
_HELD: set[Path] = set()  # lock files held by this process


class RunLockedError(ThermoRLError):
    """Another process is training in the run directory."""


class RunLock:
    """Exclusive, non-blocking lock of one run directory; a context manager."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self._key: Path | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``RunLockedError`` naming the holder (the directory must exist)."""
        key = self.path.resolve()
        if key in _HELD:
            raise RunLockedError(f"run directory {self.path.parent} is being trained by this process already")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunLockedError(
                    f"run directory {self.path.parent} is being trained by {describe_holder(self.path)}; "
                    "wait for it to finish or stop it, then continue with --resume"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: take the new one
        _HELD.add(key)
        holder = {
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self._fd, self._key = fd, key
        return self

    def release(self) -> None:
        """Drop the lock and remove the file (a killed holder leaves it; unlocked, it blocks nothing)."""
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                self.path.unlink()  # before unlocking, so a waiting opener sees a removed file and retries
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            _HELD.discard(self._key)
            self._fd = self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def describe_holder(path: Path) -> str:
    """'pid 123 on host since ... (thermorl train ...)' from a lock file, or 'another process'."""
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['started']} ({holder['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"  # the holder has not written its name yet
