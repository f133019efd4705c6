"""The outbox's edges: SQLAlchemy sessions, the core without asyncpg, the migrate command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from typing import Any

import pytest
from outbox_helpers import Ledger

from messagebus import Bus, Envelope, LifecycleError
from messagebus.__main__ import main
from messagebus.outbox import Outbox, migrate

TIMEOUT = 30.0


async def test_sqlalchemy_session_commits_and_rolls_back_with_the_outbox(
    memory_url: str, pool: Any, schema: str, dsn: str
) -> None:
    """Catches: writing on SQLAlchemy's raw connection outside its transaction (the
    driver's transaction is opened lazily: the row would commit even when the session
    rolls back), and a session that is not in a transaction being accepted."""
    sa_asyncio = pytest.importorskip("sqlalchemy.ext.asyncio")
    from sqlalchemy import text

    engine = sa_asyncio.create_async_engine(
        dsn.replace("postgresql://", "postgresql+asyncpg://"), connect_args={"server_settings": {"search_path": schema}}
    )
    queue = f"sa.{uuid.uuid4().hex[:8]}"
    ledger = Ledger()
    bus = Bus.from_url(memory_url)

    @bus.consume(queue)
    async def take(body: dict[str, Any], envelope: Envelope) -> None:
        ledger.handle(envelope.id)

    try:
        async with bus, Outbox(bus, pool, schema=schema, poll_interval=0.2) as outbox:
            async with sa_asyncio.AsyncSession(engine) as session:
                async with session.begin():
                    await session.execute(text("CREATE TABLE notes (body text)"))

                async def rolled_back() -> None:
                    async with session.begin():
                        await outbox.send(session, queue, {"kept": False})
                        raise RuntimeError("rolled back")

                with pytest.raises(RuntimeError):
                    await rolled_back()
                async with session.begin():
                    await session.execute(text("INSERT INTO notes VALUES ('kept')"))
                    ledger.expect(await outbox.send(session, queue, {"kept": True}))
                async with engine.connect() as conn, conn.begin():
                    ledger.expect(await outbox.send(conn, queue, {"kept": True}))
            await ledger.wait_all(TIMEOUT)
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM messagebus_outbox") == 2
        assert not ledger.unexpected
    finally:
        await engine.dispose()


def test_the_core_imports_without_asyncpg_and_says_what_to_install(dsn: str) -> None:
    """Catches: an asyncpg import at module level (the core would need it), and a bare
    ImportError instead of the install line when the outbox is used without it."""
    code = """
import asyncio, sys
sys.modules["asyncpg"] = None  # as if not installed
import messagebus, messagebus.outbox, messagebus.__main__
from messagebus.outbox import Outbox
outbox = Outbox(messagebus.Bus.from_url("memory://"), sys.argv[1], relay=False)
try:
    asyncio.run(outbox.start())
except messagebus.ConfigurationError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", code, dsn], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'messagebus-sdk[postgres]'" in result.stdout


def test_migrate_command_creates_then_finds_the_tables_up_to_date(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: a migrate command that is not registered, not idempotent (a second run
    fails on existing tables), or prints the DSN's password."""
    name = f"mbt_cli_{uuid.uuid4().hex[:8]}"
    secret = dsn.replace("postgres@", "postgres:s3cret-pw@")
    try:
        assert main(["outbox", "migrate", secret, "--schema", name]) == 0
        assert main(["outbox", "migrate", secret, "--schema", name]) == 0
    finally:
        asyncio.run(_drop(dsn, name))
    out = capsys.readouterr()
    assert "applied 1 migration(s)" in out.out and "up to date at version 1" in out.out
    assert "s3cret" not in out.out + out.err
    assert main(["outbox", "migrate", "postgresql://postgres:s3cret-pw@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert "connecting to PostgreSQL failed" in err and "s3cret" not in err


async def _drop(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(dsn: str) -> None:
    """Catches: two instances migrating at start-up racing each other (duplicate objects,
    a version recorded twice): the advisory lock makes the second find nothing to do."""
    name = f"mbt_race_{uuid.uuid4().hex[:8]}"
    try:
        results = await asyncio.gather(*(migrate(dsn, schema=name) for _ in range(4)))
        assert sorted(results) == [0, 0, 0, 1]
    finally:
        await _drop(dsn, name)


async def test_write_needs_an_open_sqlalchemy_transaction(pool: Any, schema: str, dsn: str, memory_url: str) -> None:
    """Catches: an AsyncConnection outside a transaction accepted (its write autocommits)."""
    sa_asyncio = pytest.importorskip("sqlalchemy.ext.asyncio")
    engine = sa_asyncio.create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        outbox = Outbox(Bus.from_url(memory_url), pool, schema=schema, relay=False)
        async with engine.connect() as conn:
            await conn.commit()  # SQLAlchemy 2 autobegins; end it
            with pytest.raises(LifecycleError, match="transaction"):
                await outbox.send(conn, "q", {})
    finally:
        await engine.dispose()
