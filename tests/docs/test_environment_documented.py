"""README.md's environment table lists exactly the variables the code reads.

The code is read, not imported: every `os.environ.get("X")`, `env.get("X")`, `os.getenv("X")`,
`environ["X"]` and `"X" in os.environ` in app/, workers/, simulators/ and chaosproxy/, with X a string or a
module constant, and the calls of helpers that read a variable named by one of their parameters
(`_port(env, "API_PORT", ...)`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("app", "workers", "simulators", "chaosproxy")
ENVIRONMENTS = {"os.environ", "environ", "env"}
# Named by the contract and documented ahead of the code that reads it (the broker settings).
DOCUMENTED_AHEAD = {"BROKER_URL"}


def _is_environment(node: ast.expr) -> bool:
    return ast.unparse(node) in ENVIRONMENTS


def _reads(node: ast.AST) -> ast.expr | None:
    """The key expression when `node` reads the environment, else None."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and _is_environment(func.value):
            return node.args[0]
        if ast.unparse(func) in ("os.getenv", "getenv"):
            return node.args[0]
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environment(node.value):
        return node.slice
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.In) \
            and _is_environment(node.comparators[0]):
        return node.left
    return None


def names_read(tree: ast.Module) -> Iterator[str]:
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}

    def value(key: ast.expr) -> str | None:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
        if isinstance(key, ast.Name):
            return constants.get(key.id)
        return None

    # Helpers that read the variable a parameter names: their name -> that parameter's position.
    helpers: dict[str, int] = {}
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            parameters = [a.arg for a in function.args.args]
            for node in ast.walk(function):
                key = _reads(node)
                if isinstance(key, ast.Name) and key.id in parameters:
                    helpers[function.name] = parameters.index(key.id)
    for node in ast.walk(tree):
        key = _reads(node)
        if key is not None and (name := value(key)) is not None:
            yield name
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
            position = helpers[node.func.id]
            if position < len(node.args) and (name := value(node.args[position])) is not None:
                yield name


def read_by_the_code() -> dict[str, set[str]]:
    """Variable -> the files reading it."""
    found: dict[str, set[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in names_read(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def documented() -> set[str]:
    """The backquoted names of the first column of README.md's `## Environment` table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Environment\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])}


def test_the_scan_sees_direct_reads_and_reads_through_helpers() -> None:
    tree = ast.parse(
        "import os\n"
        "MARGIN = 'A_MARGIN'\n"
        "def _port(env, name, default):\n    return env.get(name) or default\n"
        "def _seconds(name):\n    return os.environ.get(name)\n"
        "x = os.environ.get('A_DIRECT'); y = os.getenv('A_GETENV'); z = os.environ['A_ITEM']\n"
        "w = 'A_TEST' in os.environ\n"
        "p = _port(env, 'A_PORT', 1); s = _seconds(MARGIN); os.environ['A_WRITTEN'] = '1'\n"
    )
    assert set(names_read(tree)) == {"A_DIRECT", "A_GETENV", "A_ITEM", "A_TEST", "A_PORT", "A_MARGIN"}


def test_every_variable_the_code_reads_is_documented() -> None:
    undocumented = {name: sorted(files) for name, files in read_by_the_code().items() if name not in documented()}
    assert undocumented == {}, "add these to README.md's environment table"


def test_every_documented_variable_is_read_by_the_code() -> None:
    unread = documented() - set(read_by_the_code()) - DOCUMENTED_AHEAD
    assert unread == set(), "README.md's environment table names variables no code reads"
