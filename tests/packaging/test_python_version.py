"""make refuses a Python older than 3.11 in one line that says how to fix it, before it installs anything."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_python(path: Path, version: str) -> Path:
    """An interpreter that answers every question with its version, as far as make ever asks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def make(tmp: Path, target: str, **env: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "Makefile", tmp / "Makefile")
    return subprocess.run(["make", "--no-print-directory", target], cwd=tmp, capture_output=True, text=True,
                          timeout=30, env={**os.environ, **env})


@pytest.mark.parametrize("target", ["run", "test"])
def test_an_old_python_stops_make_before_creating_the_venv(tmp_path: Path, target: str) -> None:
    bin_dir = tmp_path / "bin"
    fake_python(bin_dir / "python3.9", "3.9")
    done = make(tmp_path, target, PYTHON="python3.9", PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert done.returncode != 0
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert re.fullmatch(r"Makefile:\d+: \*\*\* OrderFlow needs Python >= 3\.11 but python3\.9 is 3\.9; "
                        r"run make with PYTHON=python3\.11 \(or newer\)\.  Stop\.", line)
    assert not (tmp_path / ".venv").exists()


def test_a_venv_made_by_an_old_python_is_named_with_the_way_out(tmp_path: Path) -> None:
    fake_python(tmp_path / ".venv" / "bin" / "python", "3.10")
    done = make(tmp_path, "run")
    assert done.returncode != 0
    (line,) = done.stderr.splitlines()
    assert "OrderFlow needs Python >= 3.11 but .venv/bin/python is 3.10" in line
    assert "rm -rf .venv and run make again with PYTHON=python3.11 (or newer)" in line


def test_a_missing_python_is_not_taken_for_a_new_one(tmp_path: Path) -> None:
    done = make(tmp_path, "run", PYTHON="python3.99-not-installed")
    assert done.returncode != 0
    assert "python3.99-not-installed is not a working Python" in done.stderr


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.14", "4.0"])
def test_a_recent_enough_python_passes_the_check(tmp_path: Path, version: str) -> None:
    bin_dir = tmp_path / "bin"
    fake_python(bin_dir / "python3", version)
    done = make(tmp_path, "python-version", PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
