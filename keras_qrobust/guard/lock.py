"""One guard run per output folder: a lock file with the holder's PID and host.

Two runs writing one ``--out`` would leave a report that matches neither. The lock is an
exclusively created file (``O_CREAT | O_EXCL``, atomic on local and NFSv3+ file systems); a
lock whose process is gone from this host is stale and taken over. A lock from another host
cannot be checked from here: the message says how to remove it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

from .config import GuardInputError

__all__ = ["RunLock", "LOCK_FILE"]

LOCK_FILE = ".guard.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` holds ``folder/.guard.lock`` for this process, or raises
    :class:`GuardInputError` naming the run that holds it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        pid = holder.get("pid")
        return holder.get("host") == self.record["host"] and isinstance(pid, int) and not _alive(pid)

    def __enter__(self) -> "RunLock":
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if self._stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}" if holder
                       else "unreadable lock")
                raise GuardInputError(f"--out {self.path.parent} is in use by another guard run ({who}); wait for it "
                                      f"to finish or pass another --out (if that run is gone, delete {self.path})") \
                    from None
            with os.fdopen(descriptor, "w") as handle:
                json.dump(self.record, handle)
            return self
        raise GuardInputError(f"--out {self.path.parent}: could not take the lock {self.path}; delete it if no guard "
                              "run uses the folder")

    def __exit__(self, *exc) -> None:
        if self._holder().get("pid") == self.record["pid"]:
            self.path.unlink(missing_ok=True)
