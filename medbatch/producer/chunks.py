"""The unit every producer stages: a chunk of items and rejected inputs.

Kept apart from :mod:`medbatch.producer.records` (which needs pandas) so that staging a folder of
radiographs, a PACS query or report requests imports no CSV machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medbatch.db.repository.staging import Items


@dataclass
class RecordChunk:
    """The outcome of one chunk: staged-to-be items and rejected rows."""

    items: Items = field(default_factory=list)  # ItemColumns for a CSV, dicts for other inputs
    rejected: list[dict] = field(default_factory=list)
    bytes_read: int = 0


def shown(text: str | None) -> str | None:
    """``text`` as a rejection can record and show it: a NUL character, which no text column stores (PostgreSQL
    refuses it), written as ``\\x00``."""
    return text.replace("\x00", "\\x00") if text and "\x00" in text else text
