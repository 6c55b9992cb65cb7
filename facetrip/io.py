"""Files that are never half-written, and the lock that orders processes sharing a directory.

:func:`atomic_write` is the one way facetrip writes a file that something else reads later
(checkpoints, reports, metrics, caches, exports, embeddings): the content goes to a temporary
file in the same directory, is flushed and fsynced, renamed over the target, and the directory
is fsynced, so a crash leaves the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import filelock

Writer = Callable[[IO[bytes]], None]
"""Writes the content to an open binary file (e.g. ``lambda f: torch.save(obj, f)``)."""


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, content: bytes | str | Writer, mode: int = 0o644,
                 durable: bool = True) -> Path:
    """Write ``content`` to ``path`` atomically and durably; returns ``path``.

    Args:
        path: the file to (over)write; its parent directory is created if needed.
        content: bytes, text (written as UTF-8), or a function that writes to a binary file.
        mode: permission bits of the new file (temporary files are created ``0o600``).
        durable: fsync the file and its directory. ``False`` for many small files that a
            later durable write commits (the caller calls ``os.sync()`` before it): the
            rename stays atomic, only the two fsyncs per file (milliseconds each) go.

    A failure (including ``KeyboardInterrupt``) removes the temporary file and leaves any
    previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8", errors="surrogateescape"))
            elif isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_link(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` name the same file as ``source`` (a hard link, replacing ``path``
    atomically); where hard links are impossible, an atomic copy. Returns ``path``."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # file system without hard links (or across devices)
        with open(source, "rb") as src:
            return atomic_write(path, lambda f: shutil.copyfileobj(src, f))
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def locked(lock_file: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created with its directory); waits for another
    holder. It orders processes, and threads, that share a directory, on POSIX and Windows
    alike (``filelock``: ``flock`` on POSIX, ``msvcrt`` locking on Windows)."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(lock_file):  # a new lock object per call: threads wait too
        yield
