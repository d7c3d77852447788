"""Writing files safely: atomically, with exact permissions, never through a planted symlink
(fleet provisioning's certificates and keys, the local core's CA and device files)."""

from __future__ import annotations

import contextlib
import os
import secrets

from .auth import PathLike


def _fsync_dir(directory: str) -> None:
    """Makes a rename in ``directory`` durable (where directories can be opened)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:  # pragma: no cover - not on POSIX
        return
    fd = os.open(directory, os.O_RDONLY | flags | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: PathLike, data: bytes, mode: int = 0o600) -> None:
    """Atomically replaces ``path`` with a regular file holding ``data``, with permissions
    ``mode`` exactly (0600 by default: readable by the owner only), whatever the umask.

    The data goes to a new temporary file in the same directory (``O_CREAT | O_EXCL |
    O_NOFOLLOW``: never an existing file or a symlink), which is fsynced and renamed over
    ``path``; the directory is fsynced after. A symlink planted at ``path`` is replaced, never
    followed, and a crash or a failed write leaves the previous file intact.
    """
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    flags = (
        os.O_WRONLY | os.O_CREAT | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, mode)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 64 random bits
        raise FileExistsError(f"cannot create a temporary file next to {target!r}")
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
