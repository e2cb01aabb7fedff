"""Pre-encoded JSON text for bulk writes: made in bulk by pandas, copied to PostgreSQL as is."""

from __future__ import annotations

import json
from typing import Any


class RawJson(str):
    """A ``str`` that already holds the JSON encoding of a value (encoding a million dicts one by one is slow)."""

    def value(self) -> Any:
        """The decoded value, for paths that need the Python object."""
        return json.loads(self)
