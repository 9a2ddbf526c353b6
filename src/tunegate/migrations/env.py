"""Alembic environment: runs migrations on the engine handed over by `Database.migrate`."""

from alembic import context

from tunegate.db import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = 0x7475_6E65  # any constant shared by every tunegate process ("tune")


def run() -> None:
    engine = config.attributes.get("connection_engine")
    if engine is None:
        from sqlalchemy import create_engine

        engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several API servers may start at once on one database: one migrates, the others wait
            # here (the lock ends with this transaction) and then find the schema current.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        context.run_migrations()


run()
