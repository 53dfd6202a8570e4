"""Files written whole or not at all: a reader sees the old file or the new one, never a part.

The bytes go to a temporary file in the same directory, are synced, and the file is renamed
over the target (``os.replace`` is atomic on POSIX); the directory is synced after.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, data: bytes | str, *, before_rename: Callable[[], Any] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The file gets the mode a plain ``open()`` gives (``0o666`` less the umask).
    ``before_rename`` is called once the bytes are on disk under the temporary name (a
    fault-injection point)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a crash of the machine


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a file system that cannot open directories: the rename is all we have
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
