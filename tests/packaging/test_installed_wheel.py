"""A wheel installed outside the checkout migrates a database and serves orders.

The wheel is built from the working tree's files, installed with the locked dependencies into a venv of its
own from the wheelhouse `make` keeps (.venv/wheels: no network), and run from a folder outside the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import requests
from alembic.script import ScriptDirectory
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from app.adapters.sql.tables import metadata
from bench.stack import free_ports, stop_process, wait_http
from tests.conftest import _embedded_redis

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / ".venv" / "wheels"
SHIPPED = ("app/", "workers/", "simulators/", "chaosproxy/", "migrations/")
# What a process of the installed package may not inherit from the test's: nothing that points into the checkout.
SCRUBBED = ("PYTHONPATH", "DATABASE_URL", "DATABASE_SCHEMA", "REDIS_URL", "ORDERFLOW_VAR", "RESILIENCE_FILE",
            "ADMIN_TOKEN", "PROMETHEUS_MULTIPROC_DIR", "VIRTUAL_ENV")


def skip_or_fail(reason: str) -> NoReturn:
    if os.environ.get("ORDERFLOW_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (ORDERFLOW_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, argv))}:\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def source_files() -> list[str]:
    """The working tree's files: tracked and new, less what git ignores (venvs, var/, build output)."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def locked() -> dict[str, str]:
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    return {canonicalize_name(name): version
            for name, version in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.MULTILINE)}


def in_wheelhouse() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in WHEELHOUSE.glob("*"):
        if path.name.endswith(".whl"):
            name, version, *_ = parse_wheel_filename(path.name)
        elif path.name.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(path.name)
        else:
            continue
        found[name] = str(version)
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A copy of the working tree, so neither a stale build/ of the checkout ships nor the build litters it.
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for name in source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    # Without build isolation the build uses the locked setuptools already in .venv: no index to reach.
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp),
         str(source)])
    (built,) = tmp.glob("orderflow-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = {name: version for name, version in locked().items() if in_wheelhouse().get(name) != version}
    if missing:
        skip_or_fail(f"{WHEELHOUSE} lacks {', '.join(f'{n}=={v}' for n, v in sorted(missing.items()))}, so "
                     "pip cannot install offline; `make .venv/.runtime-stamp` downloads them")
    venv = tmp_path_factory.mktemp("installed") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
           "--no-compile", "--no-index", "--find-links", str(WHEELHOUSE)]
    run([*pip, "--require-hashes", "-r", str(ROOT / "requirements.lock")])
    # Resolved, not --no-deps: the wheel's own requirements must all be met by the locked tree.
    run([*pip, str(wheel)])
    return venv


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working directory outside the checkout."""
    folder = tmp_path / "site"
    folder.mkdir()
    assert not folder.resolve().is_relative_to(ROOT)
    return folder


def installed_env(venv: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def test_the_wheel_ships_every_source_file_and_the_default_policies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {re.sub(r"^migrations/", "app/migrations/", name)
                for name in source_files() if name.startswith(SHIPPED)}
    assert expected - names == set()
    assert "app/resilience.toml" in names
    assert not {name for name in names if name.startswith(("tests/", "bench/", "migrations/"))}


def test_the_packaged_policy_file_is_the_repositorys() -> None:
    assert (ROOT / "app" / "resilience.toml").read_bytes() == (ROOT / "resilience.toml").read_bytes()


def test_the_installed_package_finds_its_files_in_itself_and_var_in_the_working_directory(
        venv: Path, elsewhere: Path) -> None:
    probe = ("import app, app.config as c, app.policies as r; "
             "print(app.__file__); print(c.CHECKOUT); print(c.var_dir()); "
             "s = c.Settings.from_env(); print(s.resilience_file); print(s.database_url); "
             "print(r.load_policies(s.resilience_file) == r.load_policies(None))")
    out = run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, env=installed_env(venv)).stdout
    package, checkout, var, policies, database, defaults = out.splitlines()
    site_packages = str(venv / "lib")
    assert package.startswith(site_packages)
    assert checkout == "None"
    assert Path(var) == elsewhere.resolve() / "var"
    assert policies.startswith(site_packages) and policies.endswith("app/resilience.toml")
    assert database == f"sqlite:///{elsewhere.resolve() / 'var' / 'orderflow.db'}"
    assert defaults == "True"


def test_orderflow_db_upgrade_from_an_installed_wheel_creates_every_table(venv: Path, elsewhere: Path) -> None:
    run([str(venv / "bin" / "orderflow"), "db", "upgrade"], cwd=elsewhere, env=installed_env(venv))
    database = elsewhere / "var" / "orderflow.db"
    with sqlite3.connect(database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        products = conn.execute("SELECT count(*) FROM products").fetchone()[0]
    assert tables == set(metadata.tables) | {"alembic_version"}
    assert revision == ScriptDirectory(str(ROOT / "migrations")).get_current_head()
    assert products == 20


def _start(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture
def served(venv: Path, elsewhere: Path) -> Iterator[str]:
    """The installed package's API under gunicorn, over a database its CLI migrated, with the installed
    simulators as the dependencies and a Redis of its own."""
    redis_process, redis_url = _embedded_redis(elsewhere)
    api, *simulators = free_ports(4)
    urls = {kind: f"http://127.0.0.1:{port}"
            for kind, port in zip(("payment", "inventory", "notification"), simulators, strict=True)}
    env = installed_env(venv, REDIS_URL=redis_url, API_PORT=str(api), API_PROCESSES="1",
                        **{f"{kind.upper()}_URL": url for kind, url in urls.items()})
    processes: list[subprocess.Popen[bytes]] = []
    try:
        run([str(venv / "bin" / "orderflow"), "db", "upgrade"], cwd=elsewhere, env=env)
        for (kind, url), port in zip(urls.items(), simulators, strict=True):
            log = elsewhere / f"{kind}.log"
            process = _start([str(venv / "bin" / "python"), "-m", "simulators", kind, "--port", str(port)],
                             cwd=elsewhere, env=env, log=log)
            processes.append(process)
            wait_http(f"{url}/health", timeout=30, process=process, log=log)
        log = elsewhere / "api.log"
        gunicorn = _start([str(venv / "bin" / "gunicorn"), "--config", "python:app.gunicorn_config",
                           "app:create_app()"], cwd=elsewhere, env=env, log=log)
        processes.append(gunicorn)
        wait_http(f"http://127.0.0.1:{api}/health/live", timeout=30, process=gunicorn, log=log)
        yield f"http://127.0.0.1:{api}"
    finally:
        for process in processes:
            stop_process(process, grace=10, group=True)
        redis_process.terminate()
        redis_process.wait(timeout=5)


def test_an_installed_wheel_serves_the_catalog_and_confirms_an_order(served: str) -> None:
    products = requests.get(f"{served}/api/products", timeout=5)
    assert products.status_code == 200
    assert [p["id"] for p in products.json()["items"]] == list(range(1, 21))
    order = requests.post(f"{served}/api/orders", json={"customer_id": 7, "lines": [{"product_id": 3, "quantity": 2}]},
                          timeout=15)
    assert order.status_code == 201, order.text
    assert order.json()["status"] == "Confirmed"
    assert order.json()["inventory_source"] == "live"
    stored = requests.get(f"{served}{order.headers['Location']}", timeout=5)
    assert stored.json()["payment"]["status"] == "captured"
