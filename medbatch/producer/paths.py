"""Input roots: a producer reads only files that lie under a configured directory.

A hospital names the directories that hold the night's inputs (``MEDBATCH_INPUT_ROOTS``); a path that
resolves anywhere else (``../../etc/passwd``, a symlink out of the inbox, another department's share)
is refused before anything is opened or staged. Every producer calls :func:`check_input_path` on the
path it was given and reads only the resolved path it returns.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from medbatch.errors import InvalidInput


def check_input_path(path: str | Path, roots: Iterable[str | Path] | None) -> Path:
    """The real location of ``path``, after checking that it lies under one of ``roots``.

    Symlinks and ``..`` are resolved in ``path`` and in each root before comparing, so neither can lead
    out of a root. The path need not exist yet (the caller reports a missing file in its own words).

    Args:
        path: a file or folder given by the user.
        roots: allowed directories. ``None`` means no restriction (development default). An empty
            collection allows nothing: production with no root configured refuses every path.

    Returns:
        The resolved absolute path; read this one, not ``path``.

    Raises:
        InvalidInput: ``path`` lies outside every root, or no root is configured where one is required.
    """
    resolved = Path(path).expanduser().resolve()
    if roots is None:
        return resolved
    allowed = [Path(r).expanduser().resolve() for r in roots]
    if not allowed:
        raise InvalidInput(
            f"{path}: no input roots are configured; set MEDBATCH_INPUT_ROOTS to the directories "
            "medbatch may read (required in production)"
        )
    for root in allowed:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    shown = ", ".join(str(r) for r in allowed)
    via = "" if str(resolved) == str(Path(path).expanduser().absolute()) else f" (resolves to {resolved})"
    raise InvalidInput(f"{path}{via} is outside the input roots ({shown}); set MEDBATCH_INPUT_ROOTS to allow it")


_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``regular file``, ``folder``, ``FIFO (named pipe)``, ..."""
    if stat.S_ISREG(mode):
        return "regular file"
    return next((name for test, name in _KINDS if test(mode)), "special file")


def not_regular(path: str | Path) -> str | None:
    """Why ``path`` (links followed, nothing opened) cannot be read as input; None for a regular file.

    Raises:
        OSError: the path cannot be looked at (missing, permission denied, a dangling link).
    """
    mode = os.stat(path).st_mode
    return None if stat.S_ISREG(mode) else f"{path}: is a {file_kind(mode)}, not a regular file"


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading in binary, only if it is a regular file.

    A FIFO, device, socket or folder is refused without blocking and without reading from it: the
    file is opened non-blocking (a FIFO with no writer would otherwise wait forever; a device is never
    read), its type is checked on the open descriptor (no race with a swapped link), then it is read
    normally.

    Raises:
        InvalidInput: not a regular file, missing, or not readable.
    """
    try:
        reason = not_regular(path)  # stat first: some devices act on open()
        if reason is None:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISREG(mode):
                    os.set_blocking(fd, True)
                    return os.fdopen(fd, "rb")
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            reason = f"{path}: is a {file_kind(mode)}, not a regular file"
    except FileNotFoundError:
        reason = f"{path}: no such file"
    except PermissionError:
        reason = f"{path}: permission denied"
    except OSError as exc:
        reason = f"{path}: cannot be read ({exc.strerror or exc})"
    raise InvalidInput(reason)
