"""Alembic environment: runs on the connection handed over by medbatch.db.migrate."""

from alembic import context

from medbatch.db.tables import Base, include_object_for

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when alembic's own CLI is used
    from sqlalchemy import create_engine

    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    connection = create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    include_object=include_object_for(connection.dialect.name),
)
with context.begin_transaction():
    context.run_migrations()
