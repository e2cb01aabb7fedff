"""Input roots: a producer reads only files that lie under a configured directory.

A hospital names the directories that hold the night's inputs (``MEDBATCH_INPUT_ROOTS``); a path that
resolves anywhere else (``../../etc/passwd``, a symlink out of the inbox, another department's share)
is refused before anything is opened or staged. Every producer calls :func:`check_input_path` on the
path it was given and reads only the resolved path it returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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
