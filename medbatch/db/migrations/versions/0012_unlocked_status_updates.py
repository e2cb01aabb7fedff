"""PostgreSQL: the key guards of 0011 fire after the row, so marking items done locks no row (issue 13)

0011 refused a change of ``items.id`` and ``batches.id`` (what the foreign keys referencing them used to do) with
``BEFORE UPDATE OF id ... FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id)`` triggers. PostgreSQL fetches and
locks the old row for a BEFORE row trigger before it looks at the trigger's column list or its WHEN clause,
so every UPDATE of an item, the worker's done-marking included, wrote a row-lock WAL record before its
update: one per staged row (999,653 ``Heap/LOCK`` records, 84 MB of the 1,004 MB of WAL that
``bench/tabular.py --rows 1000000`` wrote, read with ``pg_waldump --stats``), plus the lock's CPU.

As AFTER row triggers with the same column list and WHEN clause they are checked when the row's event is
queued, an update that leaves ``id`` alone queues nothing and locks nothing, and one that changes it still fails
with SQLSTATE 23503 and the same message: the statement is undone either way.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 17:45:00.000000
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

#: The two guards: (trigger, table).
GUARDS = [("batches_id_immutable", "batches"), ("items_id_immutable", "items")]


def _recreate(timing: str) -> None:
    for trigger, table in GUARDS:
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
        op.execute(
            f"CREATE TRIGGER {trigger} {timing} UPDATE OF id ON {table} FOR EACH ROW "
            "WHEN (NEW.id IS DISTINCT FROM OLD.id) EXECUTE FUNCTION medbatch_key_immutable()"
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate("AFTER")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate("BEFORE")
