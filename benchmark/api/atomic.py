"""Write files and folders so that readers only ever see them whole: write beside the target,
then rename over it (atomic on one file system). A failure leaves nothing half-written."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

# a temporary file names its writer, so that a sweep spares the files of runs still writing
_OWNER = re.compile(r"\.(?P<pid>\d+)@(?P<host>[^/]*)\.\w+\.tmp$")


def temporary_owner(path: str | Path) -> tuple[str, int] | None:
    """(host, process id) of the writer of an atomic_file temporary, None for another name."""
    match = _OWNER.search(Path(path).name)
    return (match["host"], int(match["pid"])) if match else None


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """Yields a temporary path in the target's folder; renamed onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{socket.gethostname()}.", suffix=".tmp",
                                    dir=path.parent)
    os.close(handle)
    try:
        yield Path(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(text: str, path: str | Path) -> None:
    with atomic_file(path) as temp:
        temp.write_text(text)


@contextlib.contextmanager
def staged_directory(out: str | Path):
    """Yields an empty staging folder beside `out`; it replaces `out` if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
