"""The database edge of the outbox and inbox: asyncpg imported lazily, a DSN or a pool, and
the raw asyncpg connection behind what the caller hands in (asyncpg or SQLAlchemy)."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

from .._errors import ConfigurationError, LifecycleError

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    #: An asyncpg connection: a plain one or one acquired from a pool.
    PgConnection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    PgPool: TypeAlias = asyncpg.Pool[Any]

__all__ = ["Database", "PgConnection", "PgPool", "asyncpg_module", "raw_connection"]

INSTALL_HINT = "pip install 'messagebus-sdk[postgres]'"


def asyncpg_module() -> ModuleType:
    """``asyncpg``, imported on first use so that the core imports without it.
    Raises :class:`ConfigurationError` naming the install line when it is missing."""
    try:
        import asyncpg
    except ImportError as exc:
        raise ConfigurationError(f"the outbox and inbox need asyncpg, which is not installed: {INSTALL_HINT}") from exc
    return asyncpg


def _is_asyncpg_connection(conn: object) -> bool:
    asyncpg = asyncpg_module()
    from asyncpg.pool import PoolConnectionProxy

    return isinstance(conn, asyncpg.Connection | PoolConnectionProxy)


async def raw_connection(conn: object, what: str) -> PgConnection:
    """The asyncpg connection to write on for ``what``, inside the caller's open transaction.

    Takes an asyncpg connection (plain or from a pool), or SQLAlchemy's ``AsyncSession`` or
    ``AsyncConnection`` on the asyncpg driver (``postgresql+asyncpg://``): their raw asyncpg
    connection, with SQLAlchemy's transaction begun on it first. Raises
    :class:`ConfigurationError` for anything else and :class:`LifecycleError` when no
    transaction is open (the write would commit on its own: not atomic with the caller's).
    """
    if not _is_asyncpg_connection(conn):
        conn = await _from_sqlalchemy(conn, what)
    if not conn.is_in_transaction():  # type: ignore[attr-defined]
        raise LifecycleError(
            f"{what} needs a connection inside a transaction, so that the message commits or rolls back "
            "with the caller's own writes: 'async with conn.transaction(): ...' (asyncpg) or "
            "'async with session.begin(): ...' (SQLAlchemy)"
        )
    result: PgConnection = conn  # type: ignore[assignment]
    return result


async def _from_sqlalchemy(conn: object, what: str) -> object:
    module = type(conn).__module__
    if not module.startswith("sqlalchemy."):
        raise ConfigurationError(
            f"{what} takes an asyncpg connection or a SQLAlchemy AsyncSession/AsyncConnection, "
            f"got {type(conn).__module__}.{type(conn).__qualname__}"
        )
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if not isinstance(conn, AsyncConnection):
        raise ConfigurationError(
            f"{what} takes a SQLAlchemy AsyncSession or AsyncConnection, got {type(conn).__name__}"
        )
    if not conn.in_transaction():
        raise LifecycleError(
            f"{what} needs a SQLAlchemy connection inside a transaction: 'async with session.begin():'"
        )
    # SQLAlchemy's asyncpg adapter opens the driver's transaction at its first statement:
    # make sure it is open before writing on the driver connection behind its back.
    await conn.execute(text("SELECT 1"))
    fairy = await conn.get_raw_connection()
    driver = fairy.driver_connection
    if not _is_asyncpg_connection(driver):
        raise ConfigurationError(
            f"{what} needs SQLAlchemy on the asyncpg driver (a postgresql+asyncpg:// URL), "
            f"got a {type(driver).__module__}.{type(driver).__qualname__} connection"
        )
    return driver


class Database:
    """A DSN or an asyncpg pool: the pool is created on first use (and closed by
    :meth:`close`) when given a DSN; a pool the caller made is never closed here.
    Safe to share between tasks of one event loop."""

    def __init__(self, database: str | PgPool, *, min_size: int = 1, max_size: int = 4) -> None:
        if isinstance(database, str):
            if not database.startswith(("postgres://", "postgresql://")):
                raise ConfigurationError(
                    "database must be a PostgreSQL DSN (postgresql://user@host:5432/db) or an asyncpg pool; "
                    f"got a string that is not a postgresql:// URL ({database.partition(':')[0]!r} scheme)"
                )
            self.dsn: str | None = database
            self._pool: PgPool | None = None
        else:
            asyncpg = asyncpg_module()
            if not isinstance(database, asyncpg.Pool):
                raise ConfigurationError(
                    f"database must be a postgresql:// DSN or an asyncpg.Pool, got {type(database).__name__}"
                )
            self.dsn = None
            self._pool = database
        self._owned = isinstance(database, str)
        self._sizes = (min_size, max_size)
        self._lock = asyncio.Lock()

    async def pool(self) -> PgPool:
        """The pool (created now if needed). Raises :class:`ConnectError` if it cannot connect."""
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                self._pool = await self._create_pool()
        return self._pool

    async def _create_pool(self) -> PgPool:
        from .._errors import ConnectError

        asyncpg = asyncpg_module()
        assert self.dsn is not None
        try:
            pool: PgPool = await asyncpg.create_pool(self.dsn, min_size=self._sizes[0], max_size=self._sizes[1])
        except (OSError, asyncpg.PostgresError) as exc:
            # Never the DSN itself: it may carry a password.
            raise ConnectError(f"connecting to PostgreSQL failed: {type(exc).__name__}: {exc}") from exc
        return pool

    async def close(self) -> None:
        """Close the pool if this object created it. Idempotent."""
        pool, owned = self._pool, self._owned
        if owned and pool is not None:
            self._pool = None
            await pool.close()
