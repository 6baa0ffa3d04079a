"""Where the time goes when a goal is missed: py-spy samples of a running process, summarised."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .environment import ROOT, binary

T = TypeVar("T")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def available() -> bool:
    return shutil.which(binary("py-spy")) is not None or Path(binary("py-spy")).exists()


def _short(path: str) -> str:
    root = str(ROOT) + "/"
    if path.startswith(root):
        return path[len(root) :]
    marker = "site-packages/"
    return path.split(marker, 1)[1] if marker in path else path.rsplit("/lib/", 1)[-1]


def summarise(collapsed: str, *, top: int = 8) -> list[str]:
    """Lines: the heaviest of our functions (inclusive) and the heaviest frames of all (self time)."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for raw in stack.split(";")[1:]:  # the first entry is the thread
            match = _FRAME.match(raw)
            frames.append(f"{match['func']} ({_short(match['file'])})" if match else raw)
        if not frames:
            continue
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["py-spy collected no samples"]
    ours = [(f, n) for f, n in inclusive.most_common() if re.search(r"\((app|workers|chaosproxy)/", f)]
    lines = [f"{total} samples of busy threads"]
    lines += [f"ours, inclusive {n / total:5.1%}: {f}" for f, n in ours[:top]]
    lines += [f"self {n / total:5.1%}: {f}" for f, n in self_time.most_common(top)]
    return lines


def profile_while(pid: int, run: Callable[[], T], *, seconds: float, rate: int = 100) -> tuple[T, list[str]]:
    """Sample `pid` with py-spy while `run()` runs (py-spy stops after `seconds`)."""
    with tempfile.TemporaryDirectory(prefix="orderflow-bench-prof-") as tmp:
        out = Path(tmp) / "profile.txt"
        argv = [
            binary("py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--duration",
            str(max(1, int(seconds))),
            "--nonblocking",
            "--output",
            str(out),
        ]
        try:
            spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            return run(), [f"py-spy could not start: {exc}"]
        result = run()
        try:
            _, err = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            return result, ["py-spy did not finish"]
        if not out.exists():
            return result, [f"py-spy wrote no profile: {err.decode(errors='replace').strip()[:300]}"]
        return result, summarise(out.read_text(errors="replace"))
