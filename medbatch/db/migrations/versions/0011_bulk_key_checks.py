"""PostgreSQL: the two per-row foreign keys on the bulk path checked once per statement (issue 13)

``items.batch_id -> batches`` and ``results.item_id -> items`` were checked by PostgreSQL's foreign-key
triggers, one query per row: 10.5 CPU s of every million items COPYed and as much again for every million
results (measured on PostgreSQL 15, 100,000 rows, each alone; docs/design.md, "A million rows"). A result's
check also locked its item row (``FOR KEY SHARE``), one more tuple written per result. End to end on 1M rows
(``bench/tabular.py``), PostgreSQL's CPU went from 56.7 to 40.7 s.

The constraints become statement-level triggers over the statement's transition table, with the same
guarantees:

- **No orphan is written.** An INSERT (or COPY) of items whose batch does not exist, or of results whose
  item does not exist, fails with SQLSTATE 23503 (``foreign_key_violation``) and the constraint's old name,
  as the foreign key did. Changing ``items.batch_id`` or ``results.item_id`` is checked row by row (nothing
  in medbatch does it); changing ``batches.id`` or ``items.id`` is refused.
- **Deletes cascade.** Deleting batches deletes their items; deleting items deletes their results (and,
  along the foreign keys that stay, their errors, reports, deliveries and reviews).
- **A concurrent delete cannot leave an orphan.** As a foreign key locks the parent row it checked
  (``FOR KEY SHARE``) until commit, the insert checks lock parents: an item insert its batches; a results
  insert its jobs (one row a batch, not one item a result: that is what makes it cheap). So a delete of items
  first locks their jobs ``FOR UPDATE``, waiting for any results insert of those jobs to commit, and then
  deletes the results its fresh snapshot sees. The check also asks more than the foreign key did: a result's
  ``job_id`` must be its item's.
- **Plans stay index probes.** The results check probes ``items`` by primary key once per result; hash and
  merge joins are off inside it, so a stale row estimate cannot turn it into a scan of every item (measured:
  that plan cost more than the foreign key it replaced).

Not covered any more: ``TRUNCATE items`` (or ``batches``) alone no longer refuses to leave results (or
items) behind; truncate the whole chain, or delete.

SQLite keeps its foreign keys: there a check is an index probe in-process and cheap.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 19:30:00.000000
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_FUNCTIONS = """
CREATE FUNCTION medbatch_items_batch_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    locked bigint;
BEGIN
    SELECT count(DISTINCT batch_id) INTO wanted FROM new_items;
    IF wanted = 0 THEN
        RETURN NULL;
    END IF;
    -- What a foreign key does, once per batch instead of once per row: lock the parent against a delete.
    PERFORM 1 FROM batches WHERE id IN (SELECT batch_id FROM new_items) FOR KEY SHARE;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < wanted THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "items" violates foreign key constraint "items_batch_id_fkey"',
            DETAIL = format('Key (batch_id)=(%s) is not present in table "batches".',
                (SELECT n.batch_id FROM new_items n
                 WHERE n.batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = n.batch_id)
                 LIMIT 1));
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION medbatch_item_batch_check_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.batch_id IS NOT NULL THEN
        PERFORM 1 FROM batches WHERE id = NEW.batch_id FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE foreign_key_violation USING
                MESSAGE = 'insert or update on table "items" violates foreign key constraint "items_batch_id_fkey"',
                DETAIL = format('Key (batch_id)=(%s) is not present in table "batches".', NEW.batch_id);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION medbatch_batches_delete_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM items WHERE batch_id IN (SELECT id FROM old_batches);
    RETURN NULL;
END $$;

CREATE FUNCTION medbatch_results_item_check() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    -- Lock the results' jobs (one row each) against a delete of their items (medbatch_items_delete_results
    -- locks the same rows FOR UPDATE first), then probe each item once: it exists and is of the result's job.
    PERFORM 1 FROM jobs WHERE id IN (SELECT DISTINCT job_id FROM new_results) FOR KEY SHARE;
    IF EXISTS (
        SELECT 1 FROM new_results n
        WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.id = n.item_id AND i.job_id = n.job_id)
    ) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "results" violates foreign key constraint "results_item_id_fkey"',
            DETAIL = format('Key (item_id, job_id)=(%s) is not present in table "items".',
                (SELECT n.item_id || ', ' || n.job_id FROM new_results n
                 WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.id = n.item_id AND i.job_id = n.job_id) LIMIT 1));
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION medbatch_result_item_check_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM items WHERE id = NEW.item_id AND job_id = NEW.job_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "results" violates foreign key constraint "results_item_id_fkey"',
            DETAIL = format('Key (item_id, job_id)=(%s, %s) is not present in table "items".', NEW.item_id, NEW.job_id);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION medbatch_items_delete_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Wait for results inserts that locked these jobs (medbatch_results_item_check), then delete every
    -- result this statement's fresh snapshot sees, theirs included.
    PERFORM 1 FROM jobs WHERE id IN (SELECT DISTINCT job_id FROM old_items) FOR UPDATE;
    DELETE FROM results WHERE item_id IN (SELECT id FROM old_items);
    RETURN NULL;
END $$;

CREATE FUNCTION medbatch_key_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = format('%s.id is referenced and cannot change (%s -> %s)', TG_TABLE_NAME, OLD.id, NEW.id);
END $$;
"""

_TRIGGERS = """
CREATE TRIGGER items_batch_id_fkey AFTER INSERT ON items
    REFERENCING NEW TABLE AS new_items FOR EACH STATEMENT EXECUTE FUNCTION medbatch_items_batch_check();
CREATE TRIGGER items_batch_id_fkey_update AFTER UPDATE OF batch_id ON items
    FOR EACH ROW WHEN (NEW.batch_id IS DISTINCT FROM OLD.batch_id) EXECUTE FUNCTION medbatch_item_batch_check_row();
CREATE TRIGGER batches_delete_items AFTER DELETE ON batches
    REFERENCING OLD TABLE AS old_batches FOR EACH STATEMENT EXECUTE FUNCTION medbatch_batches_delete_items();
CREATE TRIGGER batches_id_immutable BEFORE UPDATE OF id ON batches
    FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id) EXECUTE FUNCTION medbatch_key_immutable();
CREATE TRIGGER results_item_id_fkey AFTER INSERT ON results
    REFERENCING NEW TABLE AS new_results FOR EACH STATEMENT EXECUTE FUNCTION medbatch_results_item_check();
CREATE TRIGGER results_item_id_fkey_update AFTER UPDATE OF item_id, job_id ON results
    FOR EACH ROW WHEN (NEW.item_id IS DISTINCT FROM OLD.item_id OR NEW.job_id IS DISTINCT FROM OLD.job_id)
    EXECUTE FUNCTION medbatch_result_item_check_row();
CREATE TRIGGER items_delete_results AFTER DELETE ON items
    REFERENCING OLD TABLE AS old_items FOR EACH STATEMENT EXECUTE FUNCTION medbatch_items_delete_results();
CREATE TRIGGER items_id_immutable BEFORE UPDATE OF id ON items
    FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id) EXECUTE FUNCTION medbatch_key_immutable();
"""

#: (trigger, table) pairs and the functions, for the downgrade.
TRIGGERS = [
    ("items_batch_id_fkey", "items"),
    ("items_batch_id_fkey_update", "items"),
    ("batches_delete_items", "batches"),
    ("batches_id_immutable", "batches"),
    ("results_item_id_fkey", "results"),
    ("results_item_id_fkey_update", "results"),
    ("items_delete_results", "items"),
    ("items_id_immutable", "items"),
]
FUNCTIONS = [
    "medbatch_items_batch_check",
    "medbatch_item_batch_check_row",
    "medbatch_batches_delete_items",
    "medbatch_results_item_check",
    "medbatch_result_item_check_row",
    "medbatch_items_delete_results",
    "medbatch_key_immutable",
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint("items_batch_id_fkey", "items", type_="foreignkey")
    op.drop_constraint("results_item_id_fkey", "results", type_="foreignkey")
    op.execute(_FUNCTIONS)
    op.execute(_TRIGGERS)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for trigger, table in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}()")
    op.create_foreign_key("items_batch_id_fkey", "items", "batches", ["batch_id"], ["id"], ondelete="CASCADE")
    op.create_foreign_key("results_item_id_fkey", "results", "items", ["item_id"], ["id"], ondelete="CASCADE")
