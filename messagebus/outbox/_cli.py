"""``messagebus outbox migrate DSN``: the command-line face of :func:`migrate`."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add the ``outbox`` command to the ``messagebus`` command's subparsers."""
    outbox = commands.add_parser(
        "outbox",
        help="create or upgrade the outbox/inbox tables in PostgreSQL",
        description="Tables of the transactional outbox and the idempotent inbox (messagebus.outbox).",
    )
    actions = outbox.add_subparsers(dest="outbox_command", required=True)
    migrate = actions.add_parser(
        "migrate",
        help="create or upgrade the tables (idempotent; safe to run from several processes)",
        description="Create the schema (if missing), the outbox and inbox tables, their indexes and the NOTIFY "
        "trigger, or apply the migrations they lack. Prints how many were applied.",
    )
    migrate.add_argument("dsn", help="postgresql://user:password@host:5432/database (the password is never printed)")
    migrate.add_argument("--schema", default="public", help="default: public")
    migrate.add_argument("--table-prefix", default="messagebus_", help="default: messagebus_")


def run(args: argparse.Namespace) -> str:
    """Run the parsed ``outbox`` command; returns the line to print. Raises
    :class:`~messagebus.MessageBusError` (a configuration or connection error) or
    ``asyncpg.PostgresError``."""
    from ._schema import MIGRATIONS, migrate

    applied = asyncio.run(migrate(args.dsn, schema=args.schema, table_prefix=args.table_prefix))
    where = f"schema {args.schema}, prefix {args.table_prefix}"
    if applied:
        return f"applied {applied} migration(s); the outbox tables are at version {len(MIGRATIONS)} ({where})"
    return f"the outbox tables are up to date at version {len(MIGRATIONS)} ({where})"


def main(argv: list[str] | None = None) -> int:
    """``python -m messagebus.outbox migrate DSN``: the same command without the main CLI."""
    import sys

    from .._errors import MessageBusError

    parser = argparse.ArgumentParser(prog="python -m messagebus.outbox")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["outbox", *(sys.argv[1:] if argv is None else argv)])
    try:
        print(run(args))
    except MessageBusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
