"""The admin token `make run` keeps in var/admin-token: private from the moment it exists, refused when it is not."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.config import ROOT, Settings, SettingsError, read_admin_token
from app.stack.supervisor import StartupError, _admin_token

TOO_OPEN = [0o644, 0o640, 0o604, 0o620, 0o602, 0o666]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _stored(var: Path, token: str, mode: int) -> Path:
    path = var / "admin-token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file created without an explicit mode would be readable and writable by everyone."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_generated_token_is_created_private_without_a_chmod_after(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_chmod(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the token file must be created 0600, not made so after being written")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    token = _admin_token({"ORDERFLOW_VAR": str(tmp_path)})
    path = tmp_path / "admin-token"
    assert _mode(path) == 0o600
    assert path.read_text() == token + "\n"
    assert len(token) >= 32
    assert os.listdir(tmp_path) == ["admin-token"]  # no temporary file left behind


def test_the_next_start_reuses_the_kept_token(tmp_path: Path) -> None:
    first = _admin_token({"ORDERFLOW_VAR": str(tmp_path)})
    assert _admin_token({"ORDERFLOW_VAR": str(tmp_path)}) == first
    assert Settings.from_env({"ORDERFLOW_VAR": str(tmp_path)}).admin_token == first


def test_an_empty_token_file_gets_a_new_private_token(tmp_path: Path, open_umask: None) -> None:
    path = _stored(tmp_path, "", 0o600)
    token = _admin_token({"ORDERFLOW_VAR": str(tmp_path)})
    assert token and path.read_text() == token + "\n"
    assert _mode(path) == 0o600


def test_admin_token_from_the_environment_wins_and_writes_nothing(tmp_path: Path) -> None:
    assert _admin_token({"ORDERFLOW_VAR": str(tmp_path), "ADMIN_TOKEN": "from-env"}) == "from-env"
    assert not (tmp_path / "admin-token").exists()


@pytest.mark.parametrize("mode", TOO_OPEN, ids=[f"{m:o}" for m in TOO_OPEN])
def test_a_token_file_others_may_read_or_write_stops_the_start(tmp_path: Path, mode: int) -> None:
    path = _stored(tmp_path, "kept-token", mode)
    with pytest.raises(StartupError) as stopped:
        _admin_token({"ORDERFLOW_VAR": str(tmp_path)})
    message = str(stopped.value)
    assert "\n" not in message
    assert str(path) in message and f"chmod 600 {path}" in message
    assert _mode(path) == mode and path.read_text() == "kept-token\n"  # left as found


@pytest.mark.parametrize("mode", TOO_OPEN, ids=[f"{m:o}" for m in TOO_OPEN])
def test_settings_refuse_the_same_token_file(tmp_path: Path, mode: int) -> None:
    path = _stored(tmp_path, "kept-token", mode)
    with pytest.raises(SettingsError, match="chmod 600"):
        Settings.from_env({"ORDERFLOW_VAR": str(tmp_path)})
    with pytest.raises(SettingsError, match="chmod 600"):
        read_admin_token(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_token_file_of_its_owner_alone_is_read(tmp_path: Path, mode: int) -> None:
    _stored(tmp_path, "kept-token", mode)
    assert Settings.from_env({"ORDERFLOW_VAR": str(tmp_path)}).admin_token == "kept-token"
    assert _admin_token({"ORDERFLOW_VAR": str(tmp_path)}) == "kept-token"


def test_the_cli_names_the_token_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _stored(tmp_path, "kept-token", 0o644)
    monkeypatch.setenv("ORDERFLOW_VAR", str(tmp_path))
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    assert cli.main(["flags", "list"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"orderflow: {path} is readable or writable by group or others (mode 644); fix it with: chmod 600 {path}"
    )


def test_make_run_refuses_to_start_with_a_readable_token_file(tmp_path: Path) -> None:
    path = _stored(tmp_path, "kept-token", 0o644)
    env = {k: v for k, v in os.environ.items() if k not in ("ADMIN_TOKEN", "ORDERFLOW_LOG_FORMAT")}
    env["ORDERFLOW_VAR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "app.stack"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    [line] = done.stderr.splitlines()  # a pipe, not a terminal: one JSON line
    entry = json.loads(line)
    assert (entry["process"], entry["level"]) == ("supervisor", "error")
    assert entry["msg"] == (
        f"{path} is readable or writable by group or others (mode 644); fix it with: chmod 600 {path}")
    assert sorted(os.listdir(tmp_path)) == ["admin-token"]  # nothing started, nothing written
