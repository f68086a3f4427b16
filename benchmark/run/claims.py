"""Claims: two runs on one results folder (two `gadbench run`, joblib or Dask workers of two runs)
never compute the same cell, or train the same model, at the same time.

A claim is a small JSON file beside what it guards (`seed0.claim` beside `seed0.json`; a
`training.claim` in a trained method's checkpoint folder), naming its owner (host, process id, a
random token). It is created whole and only if absent (written to a temporary file, then
hard-linked to its name: the link fails when the name exists), so of two runs that try at once one
gets it. While a claim is held, a heartbeat thread refreshes its modification time. A claim is
stale, and is taken over, when its owner is a process of this host that no longer exists, or when
its heartbeat is older than `stale_after` (an owner on another host that died). Takeover renames the
stale file aside and checks that the file it moved is the one it judged stale: if a third run took
it over in between, the moved claim is put back and the cell left to that run."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0  # ten missed heartbeats: the owner on another host is gone
HOST = socket.gethostname()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def owner_gone(host: str | None, pid: int | None, modified: float, stale_after: float) -> bool:
    """Whether what an owner left behind (a claim, a temporary file) may be taken over or removed."""
    if host == HOST and pid is not None:
        return not process_alive(pid)
    return time.time() - modified > stale_after


class Claims:
    """The claims one process holds."""

    def __init__(self, heartbeat: float = HEARTBEAT_SECONDS, stale_after: float = STALE_AFTER_SECONDS):
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.owner = {"host": HOST, "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.held: set[Path] = set()
        self._lock = threading.Lock()
        self._beating: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def try_acquire(self, path: Path) -> bool:
        """Create the claim at `path` (True), or find it held by a live owner (False)."""
        path = Path(path)
        if self._create(path):
            return self._hold(path)
        holder = self.holder(path)
        if holder is None or not self._stale(path, holder):
            return False
        return self._take_over(path, holder) and self._hold(path)

    def release(self, path: Path) -> None:
        path = Path(path)
        with self._lock:
            self.held.discard(path)
        holder = self.holder(path)
        if holder is not None and holder.get("token") == self.owner["token"]:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def holding(self, path: Path, wait: bool = False, poll: float = 2.0):
        """Yields whether the claim is held; with `wait`, waits until it is (another run's claim
        is released or goes stale). Released on leaving the block."""
        acquired = self.try_acquire(path)
        while wait and not acquired:
            time.sleep(poll)
            acquired = self.try_acquire(path)
        try:
            yield acquired
        finally:
            if acquired:
                self.release(path)

    def holder(self, path: Path) -> dict | None:
        """The claim's owner, {} for a file that does not parse, None when there is no claim."""
        try:
            return json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------ internals
    def _create(self, path: Path) -> bool:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as out:
                json.dump({**self.owner, "since": time.time()}, out)
            os.link(temp, path)  # atomic, and fails if another run's claim is there
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive creation, written in place
            return self._create_in_place(path)
        finally:
            os.unlink(temp)

    def _create_in_place(self, path: Path) -> bool:
        """O_CREAT | O_EXCL: as exclusive, but a reader may see the claim before its content (it then
        counts as held, unreadable claims go stale by their age alone)."""
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as out:
            json.dump({**self.owner, "since": time.time()}, out)
        return True

    def _stale(self, path: Path, holder: dict) -> bool:
        try:
            modified = path.stat().st_mtime
        except FileNotFoundError:
            return True
        if holder.get("token") == self.owner["token"]:
            return False  # ours: held already
        return owner_gone(holder.get("host"), holder.get("pid"), modified, self.stale_after)

    def _take_over(self, path: Path, judged: dict) -> bool:
        aside = path.with_name(f".{path.name}.{self.owner['token']}.stale")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # released or taken over meanwhile: try to create it afresh
            return self._create(path)
        moved = self.holder(aside)
        if moved != judged:  # a third run took it over between our look and our rename: give it back
            with contextlib.suppress(OSError):  # taken meanwhile, or no hard links: at worst a cell runs twice
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return self._create(path)

    def _hold(self, path: Path) -> bool:
        with self._lock:
            self.held.add(path)
            if self._beating is None:
                self._beating = threading.Thread(target=self._beat, name="gadbench-claims", daemon=True)
                self._beating.start()
        return True

    def _beat(self) -> None:
        while True:
            time.sleep(self.heartbeat)
            with self._lock:
                held = list(self.held)
                if not held:  # nothing to keep fresh: the next claim starts a new heartbeat
                    self._beating = None
                    return
            for path in held:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)
