"""Who is acting, for the audit log: the operating-system user running the command."""

from __future__ import annotations

import getpass


def whoami() -> str:
    """The current user's login name, or ``unknown`` where there is no user database (some containers)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - getpass raises several types when no user can be found
        return "unknown"
