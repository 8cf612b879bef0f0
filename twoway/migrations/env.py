"""Alembic's entry point: the migrations run on the connection twoway hands over, in its
transaction (:func:`twoway.migrations.upgrade`)."""

from alembic import context

from twoway.migrations import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
