"""One writer per directory: an advisory lock held while a command writes there.

:func:`locked` takes an exclusive ``flock`` on ``<dir>/.pbc.lock`` and writes the holder's
pid, command and start time into it.  A second writer is refused at once with a
:class:`Locked` error naming the holder.  The kernel releases the lock when its process
dies, however it dies (``kill -9`` included), so a lock file left by a killed process is
stale and is simply taken over: the lock, not the file's existence, is what counts.  Locks
are re-entrant within a process (a stage called by another stage, or by the command line
that already holds the lock), and held over file descriptors that child processes do not
inherit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from pbc.io import ArtefactError

LOCK_FILE = ".pbc.lock"


class Locked(ArtefactError):
    """Another process is writing in the directory (the message names it)."""


# directories this process holds: resolved path → (file descriptor, depth)
_held: dict[str, list] = {}


def _holder(path: Path, patience: float = 1.0) -> str:
    """Who holds the lock on ``path``, from what the holder wrote into it.  The holder writes
    right after it takes the lock, so an empty or half-written file is read again for up to
    ``patience`` seconds before giving up."""
    deadline = time.monotonic() + patience
    while True:
        try:
            info = json.loads(path.read_text("utf-8") or "{}")
            return (f"pid {int(info['pid'])} ({info.get('command', '?')}, started "
                    f"{info.get('started', '?')})")
        except FileNotFoundError:
            return "another process"            # it finished meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "another process"
            time.sleep(0.01)


def _acquire(directory: Path, command: str) -> int:
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(f"{directory}: in use by {_holder(path)}; wait for it to finish "
                         f"or use another directory") from None
        except BaseException:
            os.close(fd)
            raise
        # the file may have been removed (and another one locked) since we opened it
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {"pid": os.getpid(), "command": command,
            "started": _dt.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


@contextlib.contextmanager
def locked(directory, command: str | None = None):
    """Hold ``directory``'s write lock (the directory must exist); :class:`Locked` if another
    process holds it.  ``command`` is what the holder is doing, shown to a refused writer."""
    directory = Path(directory)
    key = str(directory.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(directory, command or " ".join(["pbc", *sys.argv[1:2]]))
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / LOCK_FILE)     # while still locked: no one else holds it
        os.close(fd)


def holds(directory) -> bool:
    """Whether this process holds ``directory``'s lock."""
    return str(Path(directory).resolve()) in _held
