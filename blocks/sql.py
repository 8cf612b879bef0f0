"""The SQL-table endpoint block: a table in SQLite, PostgreSQL or MariaDB through SQLAlchemy.

Incremental reads page by ``(modified_at, key)`` (keyset, never OFFSET) from the cursor
minus an overlap window; hard deletes are found by listing keys. Writes run in one
transaction per batch, stamp ``modified_at``/``modified_by``, and update with a
compare-and-set on ``modified_at`` so a concurrent edit is never overwritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import sqlalchemy as sa
from pydantic import Field, PrivateAttr, SecretStr
from sqlalchemy.engine import make_url

from blocks.base import EndpointBlock
from blocks.credentials import IntegrationAccountCredentials
from twoway.contract import (
    ChangeSet,
    Create,
    Delete,
    Op,
    RawRecord,
    Update,
    WriteResult,
    chunks,
)
from twoway.dburl import create_engine, database_url, driver_problem
from twoway.definition import SqlSystem
from twoway.errors import Fatal, PreconditionFailed, Retriable, Skippable
from twoway.sqlbulk import insert_rows
from twoway.uuid7 import TimeOrderedIds
from twoway.values import format_timestamp, parse_timestamp


def safe_url(url: str) -> str:
    """A database URL with its password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class SqlTable(EndpointBlock):
    """A database table kept in step by twoway.

    Example:
        ```python
        from blocks.sql import SqlTable
        table = SqlTable.load("crm-contacts")
        ```
    """

    _block_type_name = "twoway SQL Table"
    _block_type_slug = "twoway-sql-table"
    _description = "A table in SQLite, PostgreSQL or MariaDB that twoway keeps in step."

    url: SecretStr | None = Field(None, description="SQLAlchemy URL (may hold a password)")
    table: str | None = Field(None, description="Table name")
    db_schema: str | None = Field(None, description="Database schema of the table")
    key: str = Field("id", description="Primary-key column")
    modified_at: str | None = Field(None, description="Column holding the last change time")
    modified_by: str | None = Field(None, description="Column holding the last modifier")
    columns_to_sync: list[str] = Field(default_factory=list, description="Data columns to read")
    link_column: str | None = Field(
        None, description="Column stamped with the link id of each row twoway creates"
    )
    page_size: int = Field(5000, ge=1, description="Rows per read page")
    overlap_seconds: float = Field(300.0, ge=0, description="Look-back window of incremental reads")
    credentials: IntegrationAccountCredentials | None = Field(
        None, description="Database user and password, when not in the URL"
    )

    _engine: sa.Engine | None = PrivateAttr(None)
    _table: sa.Table | None = PrivateAttr(None)
    _converting: dict[str, sa.types.TypeEngine] | None = PrivateAttr(None)
    _clock: Callable[[], datetime] | None = PrivateAttr(None)
    _after_page: Callable[[list[str]], Any] | None = PrivateAttr(None)
    _as_sent: tuple[dict[str, tuple[type, ...]] | None] | None = PrivateAttr(None)
    _fresh_when_pickled = {"_engine": None, "_table": None, "_converting": None, "_as_sent": None}

    @classmethod
    def _own_settings(cls, system: SqlSystem) -> dict[str, Any]:
        """Where the table is, from a ``kind: sql`` system (the URL kept secret)."""
        return {
            "url": SecretStr(system.url) if system.url else None,
            "table": system.table,
            "db_schema": system.db_schema,
            "link_column": system.link_column,
        }

    # -- plumbing ---------------------------------------------------------------------

    def use_clock(self, clock: Callable[[], datetime]) -> None:
        """Take write timestamps from ``clock`` (tests run on virtual time)."""
        self._clock = clock

    def use_page_hook(self, hook: Callable[[list[str]], Any] | None) -> None:
        """Call ``hook`` with a read page's keys once the page is read (tests edit rows
        while a read is paging)."""
        self._after_page = hook

    def _url(self) -> sa.URL:
        if self.url is None:
            raise Fatal("no database URL configured")
        url = make_url(self.url.get_secret_value())
        creds = self.credentials
        if creds is not None:
            if creds.username and not url.username:
                url = url.set(username=creds.username)
            if creds.password and not url.password:
                url = url.set(password=creds.password.get_secret_value())
        return url

    def driver_problem(self) -> str | None:
        """Why the driver of the table's URL (from the definition or a saved block) cannot
        be loaded, naming the extra that installs it; None when it can, or when there is no
        usable URL (using the table says what is wrong then)."""
        if self.url is None:
            return None
        try:
            url = database_url(self._url())
            url.get_dialect()
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError):
            return None
        return driver_problem(url)

    def _where(self) -> str:
        return f"table {self.table!r} in {safe_url(str(self._url()))}"

    def engine(self) -> sa.Engine:
        """The block's engine, created on first use."""
        if self._engine is None:
            url = self._url()
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if url.get_backend_name() == "sqlite":
                kwargs["connect_args"] = {"timeout": 30}
            self._engine = create_engine(url, **kwargs)
        return self._engine

    def reads_ahead(self) -> bool:
        """Not for an in-memory SQLite database: each thread would open a database of its own."""
        return not isinstance(self.engine().pool, sa.pool.SingletonThreadPool)

    def sa_table(self) -> sa.Table:
        """The reflected table; a clear error when it does not exist."""
        if self._table is None:
            if not self.table:
                raise Fatal("no table configured")
            try:
                self._table = sa.Table(
                    self.table, sa.MetaData(), autoload_with=self.engine(), schema=self.db_schema
                )
                for column in self._table.primary_key.columns:
                    column.nullable = False  # SQLite reflects INTEGER PRIMARY KEY as nullable
            except sa.exc.NoSuchTableError:
                raise Fatal(f"{self._where()} does not exist") from None
            except sa.exc.OperationalError as exc:
                raise Retriable(f"cannot reach {self._where()}: {_short(exc)}") from None
            except sa.exc.ArgumentError as exc:
                raise Fatal(f"cannot open {self._where()}: {_short(exc)}") from None
        return self._table

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine = None
        self._table = None
        self._converting = None
        self._as_sent = None

    # -- the contract -----------------------------------------------------------------

    def columns(self) -> set[str]:
        return set(self.sa_table().c.keys())

    def add_link_column(self) -> bool:
        """Add the link marker column (``link_column``) when the table lacks it: a nullable
        text column that twoway alone writes, on creates. True when it was added."""
        if not self.link_column or self.link_column in self.columns():
            return False
        table = self.sa_table()
        column = sa.Column(self.link_column, sa.String(64), nullable=True)
        ddl = sa.schema.CreateColumn(column).compile(dialect=self.engine().dialect)
        quoted = self.engine().dialect.identifier_preparer.format_table(table)
        with self.engine().begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {quoted} ADD COLUMN {ddl}"))
        self.close()  # the table's columns are read again on next use
        return True

    def _col(self, name: str) -> sa.Column:
        table = self.sa_table()
        if name not in table.c:
            raise Fatal(f"column {name!r} does not exist in {self._where()}")
        return table.c[name]

    def _select(self) -> sa.Select:
        cols = [self._col(self.key)]
        cols += [self._col(c) for c in self.columns_to_sync if c != self.key]
        for extra in (self.modified_at, self.modified_by, self.link_column):
            if extra and extra not in self.columns_to_sync and extra != self.key:
                cols.append(self._col(extra))
        return sa.select(*cols)

    def _records(self, rows: Sequence[sa.Row]) -> list[RawRecord]:
        """Rows of :meth:`_select` as records, each built straight from its tuple (runs once
        per row read: kept lean)."""
        if not rows:
            return []
        at = {name: i for i, name in enumerate(rows[0]._fields)}
        columns = self.columns_to_sync
        picks = [at[c] for c in columns]
        key_at = at[self.key]
        stamp_at = at[self.modified_at] if self.modified_at else None
        by_at = at[self.modified_by] if self.modified_by else None
        link_at = at[self.link_column] if self.link_column else None
        raw = self._raw
        return [
            raw(
                row[key_at],
                {c: row[i] for c, i in zip(columns, picks, strict=True)},
                None if stamp_at is None else row[stamp_at],
                None if by_at is None else row[by_at],
                None if link_at is None else row[link_at],
            )
            for row in rows
        ]

    def _record(self, data: dict[str, Any]) -> RawRecord:
        """A row given as a dict of columns as a record."""
        return self._raw(
            data[self.key],
            {c: data[c] for c in self.columns_to_sync},
            data[self.modified_at] if self.modified_at else None,
            data[self.modified_by] if self.modified_by else None,
            data.get(self.link_column) if self.link_column else None,
        )

    def _raw(
        self, key: Any, values: dict[str, Any], stamp: Any, by: Any, link: Any = None
    ) -> RawRecord:
        return RawRecord(
            key="" if key is None else key if type(key) is str else str(key),
            values=values,
            modified_at=parse_timestamp(stamp),
            modified_by=None if by is None else str(by),
            version=self._version(stamp),
            link=None if link is None else str(link),
        )

    def _version(self, stamp: Any) -> str | None:
        if stamp is None:
            return None
        return format_timestamp(stamp) if isinstance(stamp, datetime) else str(stamp)

    def _stamp_value(self, when: datetime) -> Any:
        """``when`` in the modified_at column's own type."""
        col = self._col(self.modified_at)  # type: ignore[arg-type]
        if isinstance(col.type, sa.DateTime):
            return when if col.type.timezone else when.astimezone(UTC).replace(tzinfo=None)
        return format_timestamp(when)

    def _version_param(self, version: str) -> Any:
        col = self._col(self.modified_at)  # type: ignore[arg-type]
        if isinstance(col.type, sa.DateTime):
            parsed = parse_timestamp(version)
            return parsed if col.type.timezone else parsed.replace(tzinfo=None)  # type: ignore[union-attr]
        return version

    def _key_param(self, key: str) -> Any:
        return self._key_params([key])[0]

    def _key_params(self, keys: Sequence[str]) -> list[Any]:
        """Keys as the key column takes them (None for text an integer key cannot be)."""
        if _python_type(self._col(self.key).type) is not int:
            return list(keys)
        out: list[Any] = []
        for key in keys:
            try:
                out.append(int(key))
            except ValueError:
                out.append(None)
        return out

    def read_pages(self, cursor: str | None) -> Iterator[ChangeSet]:
        table = self.sa_table()
        key = table.c[self.key]
        if self.modified_at is None:
            for records in self._pages_by_key():
                yield ChangeSet(records=records, cursor="full", full=True, requests=1)
            return
        stamp = self._col(self.modified_at)
        with self._connect() as conn:
            signpost = conn.execute(sa.select(sa.func.max(stamp))).scalar()
        since = parse_timestamp(cursor) if cursor else None
        newest = parse_timestamp(signpost)
        now = self._clock() if self._clock else datetime.now(UTC)
        if newest is not None and newest > now:
            newest = now  # a row stamped in the future must not push the cursor past later changes
        if since is not None and (newest is None or newest < since):
            newest = since
        next_cursor = format_timestamp(newest) if newest else cursor
        if since is None:
            pages = self._pages_by_key()
        else:
            lower = self._stamp_value(since - timedelta(seconds=self.overlap_seconds))
            pages = self._pages_since(sa.or_(stamp >= lower, stamp.is_(None)), stamp, key)
        requests = 1  # the signpost
        for records in pages:
            yield ChangeSet(
                records=records, cursor=next_cursor, full=since is None, requests=requests + 1
            )
            requests = 0

    def _pages_since(
        self, where: sa.ColumnElement, stamp: sa.Column, key: sa.Column
    ) -> Iterator[list[RawRecord]]:
        """Rows matching ``where`` by (stamp, key), a page at a time (keyset paging: a row
        that moves while we page is read again later rather than skipped)."""
        base = self._select().where(where)
        last: tuple[Any, Any] | None = None
        with self._connect() as conn:
            while True:
                query = base
                if last is not None:
                    query = query.where(
                        sa.or_(stamp > last[0], sa.and_(stamp == last[0], key > last[1]))
                    )
                rows = self._rows(conn, query.order_by(stamp, key).limit(self.page_size))
                yield self._page(rows)
                if len(rows) < self.page_size or rows[-1]._mapping[self.modified_at] is None:
                    return
                last = (rows[-1]._mapping[self.modified_at], rows[-1]._mapping[self.key])

    def _pages_by_key(self) -> Iterator[list[RawRecord]]:
        """Every row by key, a page at a time."""
        key = self.sa_table().c[self.key]
        last = None
        with self._connect() as conn:
            while True:
                query = self._select()
                if last is not None:
                    query = query.where(key > last)
                rows = self._rows(conn, query.order_by(key).limit(self.page_size))
                yield self._page(rows)
                if len(rows) < self.page_size:
                    return
                last = rows[-1]._mapping[self.key]

    def _page(self, rows: Sequence[sa.Row]) -> list[RawRecord]:
        records = self._records(rows)
        if self._after_page:
            self._after_page([r.key for r in records])
        return records

    def read(self, keys: Sequence[str]) -> list[RawRecord]:
        key = self.sa_table().c[self.key]
        wanted = [k for k in self._key_params(keys) if k is not None]
        out: list[RawRecord] = []
        with self._connect() as conn:
            for part in chunks(wanted, 500):
                out.extend(self._records(self._rows(conn, self._select().where(key.in_(part)))))
        return out

    def list_keys(self) -> set[str]:
        key = self.sa_table().c[self.key]
        with self._connect() as conn:
            return {str(k) for (k,) in self._rows(conn, sa.select(key))}

    def count_keys(self) -> int:
        key = self.sa_table().c[self.key]
        with self._connect() as conn:
            return int(conn.execute(sa.select(sa.func.count(sa.distinct(key)))).scalar() or 0)

    def max_batch(self) -> int:
        return 2000

    def write(self, ops: Sequence[Op]) -> list[WriteResult]:
        if not ops:
            return []
        now = self._clock() if self._clock else datetime.now(UTC)
        for exact in (False, True):
            try:
                with self._connect() as conn, conn.begin():
                    return self._apply(conn, ops, now, exact)
            except _ShortBatch:
                continue  # a record changed since it was read, or is gone: row by row tells which
            except _BatchFailed:
                break
            except sa.exc.OperationalError as exc:
                raise Retriable(f"writing to {self._where()} failed: {_short(exc)}") from None
        # a record in the batch was refused: apply each op on its own to isolate it
        results = []
        for op in ops:
            try:
                with self._connect() as conn, conn.begin():
                    results.extend(self._apply(conn, [op], now, exact=True))
            except _BatchFailed as failed:
                results.append(WriteResult(op=op, error=Skippable(failed.message)))
            except sa.exc.OperationalError as exc:
                raise Retriable(f"writing to {self._where()} failed: {_short(exc)}") from None
        return results

    def _rows(self, conn: sa.Connection, query: sa.Select) -> Sequence[sa.Row]:
        """The query's rows. SQLite text that is not valid UTF-8 fails a read with Python's
        own (fast) decoder; the query then runs again on this connection with one that
        reads U+FFFD for the bad bytes, rather than failing the whole read."""
        try:
            return conn.execute(query).all()
        except sa.exc.OperationalError as exc:
            if "Could not decode to UTF-8" not in str(exc):
                raise
        conn.connection.dbapi_connection.text_factory = partial(  # type: ignore[union-attr]
            bytes.decode, encoding="utf-8", errors="replace"
        )
        return conn.execute(query).all()

    def _connect(self) -> sa.Connection:
        try:
            return self.engine().connect()
        except sa.exc.OperationalError as exc:
            raise Retriable(f"cannot reach {self._where()}: {_short(exc)}") from None

    def _stamps(self, now: datetime) -> dict[str, Any]:
        stamps: dict[str, Any] = {}
        if self.modified_at:
            stamps[self.modified_at] = self._stamp_value(now)
        if self.modified_by and self.integration_account:
            stamps[self.modified_by] = self.integration_account
        return stamps

    def _apply(
        self, conn: sa.Connection, ops: Sequence[Op], now: datetime, exact: bool = False
    ) -> list[WriteResult]:
        """Apply ops in the open transaction; raise _BatchFailed when the database refuses one.
        Updates go in bulk unless ``exact``; _ShortBatch when one of them matched no row."""
        stamps = self._stamps(now)
        outcome: dict[int, tuple[str | None, Exception | None]] = {}
        try:
            creates = [(i, op) for i, op in enumerate(ops) if isinstance(op, Create)]
            known: dict[str, RawRecord] = {}  # records whose stored form is what was sent
            if creates:
                mark = self.link_column
                rows = [{**op.values, mark: op.ref} if mark else op.values for _, op in creates]
                keys, sent = self._insert(conn, rows, stamps)
                as_sent = self._stored_as_sent(conn)
                nulls = dict.fromkeys(as_sent or ())  # what the columns left out read back as
                for (i, _), new_key, row in zip(creates, keys, sent, strict=True):
                    outcome[i] = (new_key, None)
                    if as_sent is not None and _fits(as_sent, row):
                        known[new_key] = self._record({**nulls, **row, self.key: new_key})
            updates = [(i, op) for i, op in enumerate(ops) if isinstance(op, Update)]
            if exact or len(updates) < 2 or not conn.dialect.supports_sane_multi_rowcount:
                for i, op in updates:
                    outcome[i] = self._update(conn, op, stamps)
            else:
                self._update_many(conn, [op for _, op in updates], stamps)
                outcome.update((i, (op.key, None)) for i, op in updates)
            for i, op in enumerate(ops):
                if isinstance(op, Delete):
                    outcome[i] = self._delete(conn, op)
        except ValueError as exc:  # a value the driver refuses to send (a NUL for PostgreSQL)
            raise _BatchFailed(str(exc)[:300]) from None
        except (sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError) as exc:
            raise _BatchFailed(_short(exc)) from None
        except sa.exc.OperationalError as exc:
            if _is_data_error(exc):
                raise _BatchFailed(_short(exc)) from None
            raise
        written = [
            k
            for i, (k, err) in outcome.items()
            if err is None and k and not isinstance(ops[i], Delete) and k not in known
        ]
        stored = {r.key: r for r in self._read_in(conn, written)} | known
        results = []
        for i, op in enumerate(ops):
            new_key, error = outcome[i]
            if error is not None:
                results.append(WriteResult(op=op, key=new_key, error=error))  # type: ignore[arg-type]
                continue
            record = stored.get(new_key) if new_key else None
            results.append(
                WriteResult(
                    op=op,
                    key=new_key,
                    version=record.version if record else None,
                    values=record.values if record else None,
                )
            )
        return results

    def _read_in(self, conn: sa.Connection, keys: list[str]) -> list[RawRecord]:
        key = self.sa_table().c[self.key]
        out = []
        for part in chunks(self._key_params(keys), 500):
            out.extend(self._records(self._rows(conn, self._select().where(key.in_(part)))))
        return out

    def _insert(
        self, conn: sa.Connection, rows: list[dict[str, Any]], stamps: dict[str, Any]
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Insert the rows; their new keys and the column values sent, in the rows' order."""
        table = self.sa_table()
        key = table.c[self.key]
        generated = not (
            key.autoincrement is True
            or (key.autoincrement == "auto" and isinstance(key.type, sa.Integer))
            or key.server_default is not None
        )
        params = []
        kinds, key_name = self._converted_columns(), self.key
        fresh = iter(_NEW_KEYS.many(len(rows))) if generated else iter(())
        if generated and _python_type(key.type) is uuid.UUID:
            # a UUID column answers the dashed form: the key is named as reads will name it
            fresh = (str(uuid.UUID(hex=k)) for k in fresh)
        for values in rows:
            row = {**self._native(values, kinds), **stamps}
            if generated and key_name not in row:
                row[key_name] = next(fresh)
            params.append(row)
        # one executemany per set of columns: rows leave out the fields they have no value for
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, row in enumerate(params):
            groups.setdefault(tuple(sorted(row)), []).append(i)
        keys: list[str] = [""] * len(params)
        returning = conn.dialect.insert_executemany_returning_sort_by_parameter_order
        for indexes in groups.values():
            batch = [params[i] for i in indexes]
            if generated:
                insert_rows(conn, table, batch)
                new = [str(p[self.key]) for p in batch]
            elif returning:
                stmt = table.insert().returning(key, sort_by_parameter_order=True)
                new = [str(k) for k in conn.execute(stmt, batch).scalars()]
            else:
                new = [str(conn.execute(table.insert(), p).inserted_primary_key[0]) for p in batch]
            for i, k in zip(indexes, new, strict=True):
                keys[i] = k
        return keys, params

    def _stored_as_sent(self, conn: sa.Connection) -> dict[str, tuple[type, ...]] | None:
        """Per column read back, the Python types SQLite stores and returns unchanged (only
        NULL for dates, decimals and other types the driver reshapes; ``_Absent`` where a
        column left out of an insert reads back as NULL); None when every row must be read
        back after a write (another database, a trigger on the table).

        A new row whose every read column was sent with one of those types reads back as
        sent, so its read-back is skipped (at 100,000 creates, a third of the load).
        """
        if self._as_sent is None:
            self._as_sent = (self._as_sent_types(conn),)
        return self._as_sent[0]

    def _as_sent_types(self, conn: sa.Connection) -> dict[str, tuple[type, ...]] | None:
        if conn.dialect.name != "sqlite":
            return None
        prefix = (
            f"{conn.dialect.identifier_preparer.quote(self.db_schema)}." if self.db_schema else ""
        )
        found = (
            conn.exec_driver_sql(
                f"SELECT type FROM {prefix}sqlite_master "
                "WHERE tbl_name = ? COLLATE NOCASE AND type IN ('table', 'trigger')",
                (self.table,),
            )
            .scalars()
            .all()
        )
        if found != ["table"]:
            return None  # a trigger may rewrite what was sent; a view has one
        out: dict[str, tuple[type, ...]] = {}
        for column in self._select().selected_columns:
            if column.name == self.key:
                continue
            kind = column.type
            if isinstance(kind, sa.Boolean):
                out[column.name] = (bool, type(None))
            elif isinstance(kind, sa.Integer):
                out[column.name] = (int, type(None))
            elif isinstance(kind, sa.Float) and not kind.asdecimal:
                out[column.name] = (float, type(None))
            elif isinstance(kind, sa.String):
                out[column.name] = (str, type(None))
            else:  # dates, decimals, blobs: the driver or SQLite may reshape them
                out[column.name] = (type(None),)
            if column.server_default is None and column.nullable:
                out[column.name] += (_Absent,)  # a create leaves out the fields it has no value for
        return out

    def _converted_columns(self) -> dict[str, sa.types.TypeEngine]:
        """The columns whose values need converting, by name, found once per table."""
        if self._converting is None:
            self._converting = {
                c.name: c.type for c in self.sa_table().c if isinstance(c.type, _CONVERTED)
            }
        return self._converting

    def _native(
        self, values: dict[str, Any], kinds: dict[str, sa.types.TypeEngine] | None = None
    ) -> dict[str, Any]:
        """Canonical values in each column's own type (timestamps, dates, numbers, flags)."""
        if kinds is None:
            kinds = self._converted_columns()
        return {
            name: _to_column_type(kinds[name], value, name)
            if value is not None and name in kinds
            else value
            for name, value in values.items()
        }

    def _update(
        self, conn: sa.Connection, op: Update, stamps: dict[str, Any]
    ) -> tuple[str | None, Exception | None]:
        compared, params = self._update_params(op, stamps)
        if conn.execute(self._update_statement(compared), params).rowcount == 1:
            return op.key, None
        return op.key, self._why_not(conn, params[_KEY_PARAM], op.key)

    def _update_many(self, conn: sa.Connection, ops: list[Update], stamps: dict[str, Any]) -> None:
        """Apply updates with one executemany per set of columns written (and whether the
        version is compared), not a statement built per record (at 10,000 updates that took
        most of the load); raise _ShortBatch when a row count falls short of its batch."""
        kinds = self._converted_columns()
        groups: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
        for op in ops:
            compared, params = self._update_params(op, stamps, kinds)
            groups.setdefault((tuple(sorted(params)), compared), []).append(params)
        for (_, compared), batch in groups.items():
            if conn.execute(self._update_statement(compared), batch).rowcount != len(batch):
                raise _ShortBatch

    def _update_statement(self, compared: bool) -> sa.Update:
        """An UPDATE of the row with the bound key (and, when ``compared``, the bound version);
        the columns it sets are those its parameters name."""
        table = self.sa_table()
        cond = table.c[self.key] == sa.bindparam(_KEY_PARAM)
        if compared:
            cond = sa.and_(cond, table.c[self.modified_at] == sa.bindparam(_VERSION_PARAM))  # type: ignore[index]
        return table.update().where(cond)

    def _update_params(
        self,
        op: Update,
        stamps: dict[str, Any],
        kinds: dict[str, sa.types.TypeEngine] | None = None,
    ) -> tuple[bool, dict[str, Any]]:
        """Whether the update compares the record's version, and its parameters: the values
        in their columns' types, the stamps, the key and the version."""
        params = {**self._native(op.values, kinds), **stamps, _KEY_PARAM: self._key_param(op.key)}
        compared = op.version is not None and bool(self.modified_at)
        if compared:
            params[_VERSION_PARAM] = self._version_param(op.version)  # type: ignore[arg-type]
        return compared, params

    def _delete(self, conn: sa.Connection, op: Delete) -> tuple[str | None, Exception | None]:
        table = self.sa_table()
        key = table.c[self.key]
        key_value = self._key_param(op.key)
        cond = key == key_value
        if op.version is not None and self.modified_at:
            cond = sa.and_(cond, table.c[self.modified_at] == self._version_param(op.version))
        if conn.execute(table.delete().where(cond)).rowcount == 1:
            return op.key, None
        exists = conn.execute(sa.select(key).where(key == key_value)).first()
        if exists is None:
            return op.key, None  # already gone: the delete's goal holds
        return op.key, PreconditionFailed(
            f"record {op.key} in {self.table} changed since it was read"
        )

    def _why_not(self, conn: sa.Connection, key_value: Any, key: str) -> Exception:
        table = self.sa_table()
        exists = conn.execute(
            sa.select(table.c[self.key]).where(table.c[self.key] == key_value)
        ).first()
        if exists is None:
            return Skippable(f"record {key} does not exist in {self.table}")
        return PreconditionFailed(f"record {key} in {self.table} changed since it was read")


#: column types whose values :func:`_to_column_type` converts; text and floats pass as they are
_CONVERTED = (sa.DateTime, sa.Date, sa.Boolean, sa.Numeric, sa.Integer)


def _python_type(kind: sa.types.TypeEngine) -> type | None:
    """The Python type a column's values come as; None when its type does not say."""
    try:
        return kind.python_type
    except NotImplementedError:
        return None


def _to_column_type(kind: sa.types.TypeEngine, value: Any, name: str) -> Any:
    """Convert a canonical value for a column; a value that does not fit is refused by name."""
    if value is None:
        return None
    try:
        if isinstance(kind, sa.DateTime):
            stamp = parse_timestamp(value)
            if stamp is None:
                raise ValueError(f"{value!r} is not a timestamp")
            return stamp if kind.timezone else stamp.replace(tzinfo=None)
        if isinstance(kind, sa.Date) and isinstance(value, str):
            return date.fromisoformat(value[:10])
        if isinstance(kind, sa.Boolean) and not isinstance(value, bool):
            return str(value).strip().lower() in ("1", "true", "yes", "y", "t")
        if (
            isinstance(kind, sa.Numeric)
            and not isinstance(kind, sa.Float)
            and isinstance(value, int | float | str)
        ):
            return Decimal(str(value))
        if isinstance(kind, sa.Integer) and isinstance(value, str):
            return int(value)
    except (ValueError, ArithmeticError) as exc:
        raise _BatchFailed(f"column {name!r}: {exc}") from None
    return value


class _Absent:
    """A column a row leaves out (its type, to :func:`_fits`)."""


_ABSENT = _Absent()


def _fits(types: dict[str, tuple[type, ...]], row: dict[str, Any]) -> bool:
    """Whether every read column is in the row with a value SQLite keeps as it is (exact
    types: a bool in an INTEGER column reads back as 0 or 1), or is left out and reads back
    as NULL (a column with a default takes the default)."""
    return all(type(row.get(name, _ABSENT)) in allowed for name, allowed in types.items())


_NEW_KEYS = TimeOrderedIds()
"""Keys for new rows of tables whose key the database does not make: UUIDv7 hex, so a
table's key index takes them at its end (see :mod:`twoway.uuid7`)."""


#: names of the bound key and version of a bulk update (not column names: those set values)
_KEY_PARAM, _VERSION_PARAM = "twoway_key_", "twoway_version_"


class _ShortBatch(Exception):
    """A bulk update matched fewer rows than it carried: the batch is applied again, row by
    row, to tell the records that changed since they were read from those that are gone."""


class _BatchFailed(Exception):
    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def _short(exc: BaseException) -> str:
    """The driver's message without the SQL statement and parameters (they may hold data)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()[0]
    return text[:300]


def _is_data_error(exc: sa.exc.OperationalError) -> bool:
    """MariaDB reports bad values (1366 incorrect string, 1406 too long) as OperationalError."""
    code = getattr(getattr(exc, "orig", None), "args", [None])[0]
    return code in (1264, 1265, 1292, 1366, 1406, 1048, 1364)
