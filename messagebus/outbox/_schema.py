"""The outbox and inbox tables, their indexes, and the migrations that create them.

Schema (``<schema>.<prefix>...``, defaults ``public.messagebus_...``; docs/outbox.md explains
each column):

- ``outbox``: one row per message written inside a user's transaction; ``sent_at`` is set
  once the relay's publish was confirmed. Partial indexes keep the relay's scans on the
  unsent rows only, whatever the number of sent rows waiting for clean-up.
- ``inbox``: one row per handled message and consumer (destination, group), written in the
  handler's own transaction; ``expires_at`` ends the de-duplication window.
- ``schema_version``: the migrations applied.

A statement-level trigger on the outbox calls ``pg_notify`` on every insert: delivered when
the inserting transaction commits and never when it rolls back, so the relays wake exactly
for committed messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import ConfigurationError, TopologyError
from ._db import Database

if TYPE_CHECKING:
    from ._db import PgConnection, PgPool

__all__ = ["MIGRATIONS", "Tables", "migrate", "schema_version"]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
#: PostgreSQL truncates identifiers (and channel names) to 63 bytes; the longest name made
#: from a prefix is the prefix plus "outbox_key_pending".
_MAX_IDENTIFIER = 63


@dataclass(frozen=True, slots=True)
class Tables:
    """Where the outbox and inbox live: a schema and a table-name prefix (both lower-case
    SQL identifiers, checked here). Immutable; cheap to compare."""

    schema: str = "public"
    prefix: str = "messagebus_"

    def __post_init__(self) -> None:
        for what, value, longest in (("schema", self.schema, 0), ("table_prefix", self.prefix, 18)):
            if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value) or len(value) + longest > _MAX_IDENTIFIER:
                raise ConfigurationError(
                    f"{what} must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most "
                    f"{_MAX_IDENTIFIER - longest} characters), got {value!r}"
                )

    def name(self, table: str) -> str:
        """The qualified, quoted name of ``<prefix><table>``."""
        return f'"{self.schema}"."{self.prefix}{table}"'

    @property
    def outbox(self) -> str:
        return self.name("outbox")

    @property
    def inbox(self) -> str:
        return self.name("inbox")

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel the relays wait on."""
        return f"{self.schema}.{self.prefix}outbox"[:_MAX_IDENTIFIER]

    @property
    def lock_key(self) -> str:
        """Text hashed into the advisory lock that serialises migrations of these tables."""
        return f"messagebus.outbox.migrate:{self.schema}.{self.prefix}"


#: Migrations in order; version n is ``MIGRATIONS[n - 1]``. Never edit one that shipped:
#: append a new one. ``{outbox}``, ``{inbox}``, ``{version}``, ``{schema}``, ``{p}`` and
#: ``{channel}`` are filled from :class:`Tables`.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS {outbox} (
        id               bigserial PRIMARY KEY,
        destination_kind text        NOT NULL CHECK (destination_kind IN ('topic', 'queue')),
        destination      text        NOT NULL,
        message_key      text,
        headers          json        NOT NULL,
        body             bytea       NOT NULL,
        created_at       timestamptz NOT NULL DEFAULT now(),
        available_at     timestamptz NOT NULL DEFAULT now(),
        retry_at         timestamptz,
        attempts         integer     NOT NULL DEFAULT 0,
        last_error       text,
        sent_at          timestamptz
    );
    CREATE INDEX IF NOT EXISTS "{p}outbox_pending" ON {outbox} (id) WHERE sent_at IS NULL;
    CREATE INDEX IF NOT EXISTS "{p}outbox_key_pending" ON {outbox} (destination, message_key, id)
        WHERE sent_at IS NULL AND message_key IS NOT NULL;
    CREATE INDEX IF NOT EXISTS "{p}outbox_sent" ON {outbox} (sent_at) WHERE sent_at IS NOT NULL;
    CREATE OR REPLACE FUNCTION "{schema}"."{p}outbox_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify(TG_ARGV[0], '');
        RETURN NULL;
    END $$;
    DROP TRIGGER IF EXISTS "{p}outbox_notify" ON {outbox};
    CREATE TRIGGER "{p}outbox_notify" AFTER INSERT ON {outbox}
        FOR EACH STATEMENT EXECUTE FUNCTION "{schema}"."{p}outbox_notify"('{channel}');
    CREATE TABLE IF NOT EXISTS {inbox} (
        message_id     text        NOT NULL,
        destination    text        NOT NULL,
        consumer_group text        NOT NULL,
        handled_at     timestamptz NOT NULL DEFAULT now(),
        expires_at     timestamptz NOT NULL,
        PRIMARY KEY (message_id, destination, consumer_group)
    );
    CREATE INDEX IF NOT EXISTS "{p}inbox_expires" ON {inbox} (expires_at);
    """,
)


def _render(sql: str, tables: Tables) -> str:
    return sql.format(
        outbox=tables.outbox,
        inbox=tables.inbox,
        version=tables.name("schema_version"),
        schema=tables.schema,
        p=tables.prefix,
        channel=tables.channel,
    )


async def schema_version(conn: PgConnection, tables: Tables) -> int:
    """The last migration applied to ``tables`` (0 when none)."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", tables.name("schema_version"))
    if not exists:
        return 0
    version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {tables.name('schema_version')}")
    return int(version)


async def migrate(
    database: str | PgPool | PgConnection, *, schema: str = "public", table_prefix: str = "messagebus_"
) -> int:
    """Create or upgrade the outbox and inbox tables in ``schema`` (created if missing);
    returns how many migrations it applied (0 when up to date).

    ``database`` is a ``postgresql://`` DSN, an asyncpg pool or connection. Idempotent and
    safe to run from several processes at once: one transaction under an advisory lock, so
    a concurrent run waits and then finds nothing to do. Raises :class:`ConfigurationError`
    for a bad schema or prefix, :class:`ConnectError` when it cannot connect, and
    :class:`TopologyError` (the ``asyncpg.PostgresError`` chained) when PostgreSQL refuses a
    statement (e.g. no CREATE privilege).
    """
    tables = Tables(schema, table_prefix)
    if isinstance(database, str) or _is_pool(database):
        db = Database(database)  # type: ignore[arg-type]
        try:
            pool = await db.pool()
            async with pool.acquire() as conn:
                return await _migrate(conn, tables)
        finally:
            await db.close()
    return await _migrate(database, tables)  # type: ignore[arg-type]


def _is_pool(database: object) -> bool:
    from ._db import asyncpg_module

    return isinstance(database, asyncpg_module().Pool)


async def _migrate(conn: PgConnection, tables: Tables) -> int:
    from ._db import asyncpg_module

    try:
        return await _apply(conn, tables)
    except asyncpg_module().PostgresError as exc:
        raise TopologyError(
            f"migrating the outbox tables in schema {tables.schema!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


async def _apply(conn: PgConnection, tables: Tables) -> int:
    version_table = tables.name("schema_version")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", tables.lock_key)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{tables.schema}"')
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {version_table} "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await schema_version(conn, tables)
        applied = 0
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            await conn.execute(_render(sql, tables))
            await conn.execute(f"INSERT INTO {version_table} (version) VALUES ($1)", version)
            applied += 1
    return applied
