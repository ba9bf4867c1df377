"""Alembic's entry: applies the revisions on the connection bench.series.database opens, in
one transaction, so a store is never left half-migrated."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=context.config.attributes["version_table"],
                  transactional_ddl=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # two runners opening a new store at once: one migrates, the other waits and finds it
        # done (SQLite's writers queue on its lock already)
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7142507)")
    context.run_migrations()
