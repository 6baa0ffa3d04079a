"""`orderflow`: the operator's command line, for when the admin API is not the way in.

    orderflow flags list
    orderflow flags set RealTimePayments off|on
    orderflow dead-letters list
    orderflow dead-letters replay ID
    orderflow db upgrade

It talks to the database directly (DATABASE_URL / DATABASE_SCHEMA, as the services do); a replay also
hints the workers through the broker, best effort: their relay finds the job regardless.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from app.config import Settings, SettingsError

_ON = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orderflow", description="Operate an OrderFlow deployment.")
    groups = parser.add_subparsers(dest="group", required=True)

    flags = groups.add_parser("flags", help="feature flags").add_subparsers(dest="command", required=True)
    flags.add_parser("list", help="show every flag")
    set_flag = flags.add_parser("set", help="turn a flag on or off")
    set_flag.add_argument("name")
    set_flag.add_argument("state", choices=sorted(_ON))

    letters = groups.add_parser("dead-letters", help="payments the workers gave up on")
    letter_commands = letters.add_subparsers(dest="command", required=True)
    letter_commands.add_parser("list", help="newest first")
    replay = letter_commands.add_parser("replay", help="send the order's payment round again")
    replay.add_argument("id", type=int)

    db = groups.add_parser("db", help="the schema").add_subparsers(dest="command", required=True)
    db.add_parser("upgrade", help="apply the Alembic migrations")
    return parser


def _print(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings or Settings.from_env()
    except SettingsError as exc:
        print(f"orderflow: {exc}", file=sys.stderr)
        return 2
    from sqlalchemy.exc import SQLAlchemyError

    from app.adapters.migrate import database_problem, error_line

    if args.group == "db":
        from app.adapters.migrate import upgrade

        try:
            upgrade(settings.database_url, schema=settings.database_schema)
        except (SQLAlchemyError, ValueError) as exc:
            print(f"orderflow: cannot upgrade the database: {error_line(exc)}", file=sys.stderr)
            return 1
        print("database is at the latest revision")
        return 0

    # Asked first, so a database that is missing or was never migrated gets one line saying so and what to
    # do, instead of a traceback about a missing table (and SQLite creating an empty file on the way).
    problem = database_problem(settings.database_url, schema=settings.database_schema)
    if problem:
        print(f"orderflow: {problem}", file=sys.stderr)
        return 1
    from app.adapters.db import make_engine
    from app.adapters.sql import SqlUnitOfWorkFactory
    from app.services.unit_of_work import StorageError

    engine = make_engine(settings.database_url, schema=settings.database_schema, pool_size=1)
    try:
        if args.group == "flags":
            return _flags(SqlUnitOfWorkFactory(engine), args)
        return _dead_letters(SqlUnitOfWorkFactory(engine), args, settings)
    except (SQLAlchemyError, StorageError) as exc:
        print(f"orderflow: database error: {error_line(exc)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _flags(uow: Any, args: argparse.Namespace) -> int:
    from app.services.flags import FlagService

    service = FlagService(uow)
    if args.command == "list":
        _print({"flags": [f.to_dict() for f in service.all()]})
        return 0
    flag = service.set(args.name, enabled=_ON[args.state], by="cli")
    if flag is None:
        known = ", ".join(f.name for f in service.all())
        print(f"orderflow: unknown flag {args.name!r} (known: {known})", file=sys.stderr)
        return 2
    _print(flag.to_dict())
    return 0


def _dead_letters(uow: Any, args: argparse.Namespace, settings: Settings) -> int:
    from app.services import dead_letters
    from app.services.unit_of_work import deliver_to

    if args.command == "list":
        _print({"items": [d.to_dict() for d in dead_letters.list_dead_letters(uow)]})
        return 0
    from app.adapters.publisher import CeleryPublisher

    publisher = CeleryPublisher(settings)
    try:
        replayed = dead_letters.replay_dead_letter(uow.with_publisher(deliver_to(publisher)), args.id)
    except (dead_letters.DeadLetterNotFound, dead_letters.DeadLetterAlreadyReplayed,
            dead_letters.OrderNotReplayable) as exc:
        print(f"orderflow: {exc}", file=sys.stderr)
        return 1
    publisher.flush(timeout=1.0)
    publisher.close()
    _print(replayed.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
