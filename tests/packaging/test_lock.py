"""The lock files pin the whole dependency tree, and every install path (make, the image) goes through them."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
DEV = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(lock: str) -> dict[str, str]:
    """name -> version of every package in a pip-compile lock file, checking each carries a hash."""
    found: dict[str, str] = {}
    entries = re.split(r"\n(?=\S)", (ROOT / lock).read_text(encoding="utf-8"))
    for entry in entries:
        match = PIN.match(entry)
        if match is None:
            assert entry.startswith("#") or not entry.strip(), f"{lock}: not a pinned requirement: {entry!r}"
            continue
        assert "--hash=sha256:" in entry, f"{lock}: {match.group(1)} has no hash"
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def exact_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"pyproject.toml: {requirement} is not pinned to one version"
    return spec.version


@pytest.mark.parametrize(("lock", "requirements"), [("requirements.lock", RUNTIME),
                                                     ("requirements-dev.lock", RUNTIME + DEV)])
def test_the_lock_pins_every_pyproject_dependency_at_its_version(lock: str, requirements: list[Requirement]) -> None:
    locked = pins(lock)
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert locked.get(name) == exact_version(requirement), f"{lock}: {name} is not at pyproject.toml's pin"


def test_make_run_installs_no_test_tooling() -> None:
    """`make run` installs the runtime lock alone: the browser driver and plotting stay with the tests."""
    assert not {"pytest", "mypy", "ruff", "selenium", "matplotlib", "schemathesis"} & set(pins("requirements.lock"))


def test_the_dev_lock_keeps_every_runtime_pin() -> None:
    """`make test` installs the dev lock over the runtime one: a package at two versions would flip-flop."""
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_make_installs_from_the_locks_then_the_project_alone() -> None:
    done = subprocess.run(["make", "--no-print-directory", "-n", "-B", ".venv/.installed-stamp"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    commands = done.stdout
    runtime = commands.index("--require-hashes --no-index --find-links .venv/wheels -r requirements.lock")
    project = commands.index("install --no-deps -e .")
    dev = commands.index("install --require-hashes -r requirements-dev.lock")
    assert runtime < project < dev


def test_the_image_installs_the_locked_tree_in_a_layer_before_the_code() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lock_copied = dockerfile.index("COPY requirements.lock ./")
    lock_installed = dockerfile.index("pip install --require-hashes -r requirements.lock")
    code_copied = dockerfile.index("COPY . .")
    project_installed = dockerfile.index("pip install --no-deps .")
    assert lock_copied < lock_installed < code_copied < project_installed
