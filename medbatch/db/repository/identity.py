"""This database's identity, which every batch message carries so a worker refuses work staged elsewhere."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from medbatch.db.tables import (
    Instance,
)
from medbatch.errors import WrongDatabase

_instance_ids: dict[str, str] = {}


def instance_id(session: Session, *, fresh: bool = False) -> str:
    """This database's identity (cached per database URL and process unless ``fresh``)."""
    url = str(session.get_bind().url)
    if fresh or url not in _instance_ids:
        _instance_ids[url] = session.scalar(select(Instance.id))
    return _instance_ids[url]


def check_instance(session: Session, expected: str | None) -> None:
    """Refuse work staged in another database. ``expected`` is None for messages that carry no identity.

    A mismatch is confirmed against a fresh read first (the database may have been re-created).
    """
    if expected is not None and expected != instance_id(session) and expected != instance_id(session, fresh=True):
        raise WrongDatabase(
            f"message is for database {expected}, this worker uses {instance_id(session)}: "
            "check MEDBATCH_DATABASE_URL of the workers sharing this broker"
        )
