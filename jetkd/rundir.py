"""Output folders that hold one result each: a lock while a process writes them, and no silent overwrite.

    with OutputFolder(run_dir, holds=("config.yaml", "last.pt", "best.pt", "metrics.jsonl"), what="run",
                      resume=False, force=False) as folder:
        ...                                 # this process alone writes run_dir

A folder *holds* a result when any of the ``holds`` files exists. Opening such a folder is refused (one line:
:class:`~jetkd.errors.InputError`) unless ``resume`` (continue it) or ``force`` (move it aside to
``<name>.replaced-<time>`` first; the new path is in ``folder.moved_to``).

The lock is the file ``<folder>/.lock``, created exclusively (``O_EXCL``, atomic on local and NFS v3+ file
systems) and holding ``{"pid", "host", "since"}``. A second process aimed at a locked folder fails at once,
naming the holder. The lock of a dead process is recognised and taken over: on the same host by asking the
kernel whether its pid lives; from another host (a shared cluster file system) when the holder has not touched
the lock for :data:`STALE_SECONDS` (holders :meth:`OutputFolder.touch` it as they work).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Sequence

from jetkd.errors import InputError

STALE_SECONDS = 5 * 60  # a lock from another host untouched this long belongs to a dead process (trainers touch it every minute)
_HELD: set[Path] = set()  # locks this process holds (a lock naming our pid but not listed here is left over)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_holder(folder: Path) -> dict | None:
    """The live holder of ``folder``'s lock (``{"pid", "host", "since"}``), or None if unlocked or stale."""
    path = Path(folder) / ".lock"
    try:
        holder = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (FileNotFoundError, ValueError):
        return None
    if holder.get("host") != socket.gethostname():
        return holder if age < STALE_SECONDS else None
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():
        return holder if path.resolve() in _HELD else None
    return holder if _alive(pid) else None


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files ``.<name>.tmp-<pid>`` in ``folder`` whose writing process is dead (a killed run)."""
    out = []
    for path in Path(folder).glob(".*.tmp-*"):
        pid = path.name.rpartition("-")[2]
        if pid.isdigit() and not (int(pid) == os.getpid() or _alive(int(pid))):
            out.append(path)
    return out


class OutputFolder:
    """``folder`` locked for this process, refused if it already holds a result (module docstring).

    holds: file names whose presence means the folder holds a result. what: the result's name in messages
    ("run", "cache"). hint: what to do instead, appended to the refusal (default: ``--resume`` / ``--force``).
    """

    def __init__(self, folder: str | Path, holds: Sequence[str], what: str = "run", *, resume: bool = False,
                 force: bool = False, hint: str | None = None):
        self.folder, self.holds, self.what = Path(folder), tuple(holds), what
        self.resume, self.force = resume, force
        self.hint = hint or "continue it with --resume, or start over with --force (moves it aside)"
        self.moved_to: Path | None = None
        self._lock: Path | None = None
        self._created = False

    def holds_result(self) -> list[str]:
        """The ``holds`` files present in the folder."""
        return [name for name in self.holds if (self.folder / name).exists()]

    def __enter__(self) -> "OutputFolder":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "OutputFolder":
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(str(self.folder), f"is a file; expected a folder for the {self.what}")
        self._refuse_if_locked()
        present = self.holds_result()
        if present and not self.resume:
            if not self.force:
                raise InputError(str(self.folder), f"already holds a {self.what} ({', '.join(present)}); {self.hint}")
            self.moved_to = self.folder.with_name(f"{self.folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while self.moved_to.exists():
                n += 1
                self.moved_to = self.moved_to.with_name(f"{self.moved_to.name.split('~')[0]}~{n}")
            shutil.move(str(self.folder), str(self.moved_to))
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        for path in stale_temporaries(self.folder):
            path.unlink(missing_ok=True)
        return self

    def _refuse_if_locked(self) -> None:
        holder = lock_holder(self.folder)
        if holder is not None:
            raise InputError(str(self.folder), f"in use by process {holder.get('pid')} on {holder.get('host')} "
                                               f"since {holder.get('since')}; wait for it to end or stop it")

    def _take_lock(self) -> None:
        path = self.folder / ".lock"
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_if_locked()  # raced with a live process: refuse; else the lock is stale
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self._lock = path.resolve()
            _HELD.add(self._lock)
            return
        self._refuse_if_locked()
        raise InputError(str(self.folder), "could not take the folder's lock (.lock keeps reappearing)")

    def touch(self) -> None:
        """Refresh the lock's time (for :data:`STALE_SECONDS` across hosts)."""
        if self._lock is not None:
            try:
                os.utime(self._lock)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        """Remove the lock, and the folder if this opener created it and nothing was written (a run stopped by
        bad input leaves no trace)."""
        if self._lock is not None:
            _HELD.discard(self._lock)
            self._lock.unlink(missing_ok=True)
            self._lock = None
            if self._created and not any(self.folder.iterdir()):
                self.folder.rmdir()
