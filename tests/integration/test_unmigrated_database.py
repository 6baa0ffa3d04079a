"""A database that is missing or was never migrated: the CLI says so in one line, the API fails readiness.

Against PostgreSQL (an empty schema of the test's own) when DATABASE_URL points at one, SQLite otherwise;
the missing-file cases are SQLite's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from app import create_app
from app.adapters.migrate import upgrade
from app.cli import main
from app.config import ROOT, Settings
from app.policies import parse_policies
from bench.stack import free_ports
from tests.support import DatabaseHandle, FakeInventory, FakePayments, FakePublisher

HINT = "orderflow db upgrade"


@pytest.fixture
def empty_database() -> Iterator[DatabaseHandle]:
    """A database with no tables: an empty PostgreSQL schema, or an empty SQLite file."""
    url = os.environ.get("DATABASE_URL")
    if url and not url.startswith("sqlite"):
        schema = f"t_empty_{uuid.uuid4().hex[:12]}"
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield DatabaseHandle(url, schema)
        finally:
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            engine.dispose()
        return
    with tempfile.TemporaryDirectory(prefix="orderflow-empty-") as tmp:
        path = Path(tmp) / "orderflow.db"
        path.touch()
        yield DatabaseHandle(f"sqlite:///{path}", None)


def settings_for(db: DatabaseHandle) -> Settings:
    return Settings.from_env({**db.env(), "ADMIN_TOKEN": "t"})


def run_cli(capsys: pytest.CaptureFixture[str], db: DatabaseHandle, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), settings=settings_for(db))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_sqlite_file_is_named_in_one_line_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "orderflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_SCHEMA")}
    env["DATABASE_URL"] = f"sqlite:///{missing}"
    result = subprocess.run([sys.executable, "-m", "app.cli", "flags", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"orderflow: sqlite:///{missing}: the SQLite database file does not exist")
    assert HINT in result.stderr
    assert not missing.exists() and not missing.parent.exists()


@pytest.mark.parametrize("argv", [("flags", "list"), ("flags", "set", "RealTimePayments", "off"),
                                  ("dead-letters", "list"), ("dead-letters", "replay", "1")])
def test_every_command_on_a_database_without_tables_says_to_migrate(
    capsys: pytest.CaptureFixture[str], empty_database: DatabaseHandle, argv: tuple[str, ...]
) -> None:
    code, out, err = run_cli(capsys, empty_database, *argv)
    assert code != 0 and out == ""
    assert err.count("\n") == 1, err
    assert "the database has no OrderFlow tables (it was never migrated); run: orderflow db upgrade" in err
    if empty_database.schema:
        assert f"(schema {empty_database.schema})" in err


def test_a_database_behind_the_code_names_both_revisions(
    capsys: pytest.CaptureFixture[str], empty_database: DatabaseHandle
) -> None:
    upgrade(empty_database.url, schema=empty_database.schema, revision="0001")
    code, _, err = run_cli(capsys, empty_database, "flags", "list")
    assert code != 0
    assert "the database schema is at revision 0001, this code needs 0002; run: orderflow db upgrade" in err


def test_db_upgrade_is_the_fix(capsys: pytest.CaptureFixture[str], empty_database: DatabaseHandle) -> None:
    assert run_cli(capsys, empty_database, "db", "upgrade")[0] == 0
    code, out, err = run_cli(capsys, empty_database, "flags", "list")
    assert (code, err) == (0, "")
    assert '"RealTimePayments"' in out


def test_an_unreachable_database_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    db = DatabaseHandle(f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/test", None)
    code, _, err = run_cli(capsys, db, "dead-letters", "list")
    assert code != 0
    assert err.count("\n") == 1, err
    assert err.startswith(f"orderflow: postgresql+psycopg://postgres:***@127.0.0.1:{port}/test: cannot use the "
                          "database: ")
    code, _, err = run_cli(capsys, db, "db", "upgrade")
    assert code != 0 and err.startswith("orderflow: cannot upgrade the database: ") and err.count("\n") == 1


def test_the_api_on_a_database_without_tables_fails_readiness_and_answers_503(
    empty_database: DatabaseHandle, redis_url: str, key_prefix: str
) -> None:
    settings = Settings(database_url=empty_database.url, database_schema=empty_database.schema,
                        redis_url=redis_url, redis_prefix=key_prefix, admin_token="t")
    app = create_app(settings, policies=parse_policies(""), redis=redis.Redis.from_url(redis_url),
                     dependencies={"inventory": FakeInventory(), "payments": FakePayments(),
                                   "publisher": FakePublisher()})
    client = app.test_client()
    try:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json is not None and ready.json["status"] == "fail"
        assert ready.json["checks"]["database"] == [{
            "status": "fail",
            "output": "the database has no OrderFlow tables (it was never migrated); run: orderflow db upgrade"}]
        order = client.post("/api/orders", json={"customer_id": 1, "lines": [{"product_id": 1, "quantity": 1}]})
        for response in (order, client.get("/api/products"), client.get("/api/orders"),
                         client.get("/admin/flags", headers={"Authorization": "Bearer t"})):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert "Retry-After" in response.headers
    finally:
        app.extensions["orderflow"].engine.dispose()
