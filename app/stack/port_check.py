"""Is a TCP port free to listen on, and if not, which process holds it.

`make run` asks before it starts anything, so a port taken by another program (or an earlier `make run`)
stops it with the culprit's pid and command instead of a server that keeps failing to bind. The holder is
found the way `ss -ltnp` finds it: the socket's inode in /proc/net/tcp{,6}, then the process with a file
descriptor on that inode. A process of another user (or of another network namespace) stays unnamed.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


@dataclass(frozen=True)
class PortHolder:
    pid: int
    command: str


def bind_error(port: int, host: str = "127.0.0.1") -> OSError | None:
    """Why a server could not listen on host:port now (None: it could). With SO_REUSEADDR, as every server of
    the stack sets it, so a connection of an earlier run still in TIME_WAIT does not count as taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


def in_use(error: OSError) -> bool:
    return error.errno == errno.EADDRINUSE


def port_holders(port: int, *, proc: Path = Path("/proc")) -> list[PortHolder]:
    """The processes with a socket bound to `port` (listening ones if there are any), by pid."""
    inodes = _socket_inodes(port, proc)
    if not inodes:
        return []
    links = {f"socket:[{inode}]" for inode in inodes}
    holders: list[PortHolder] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # another user's process, or gone
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in links:
                    holders.append(PortHolder(int(entry.name), _command(entry)))
                    break
            except OSError:
                continue
    return sorted(holders, key=lambda h: h.pid)


def _socket_inodes(port: int, proc: Path) -> set[str]:
    listening: set[str] = set()
    bound: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or int(fields[1].rsplit(":", 1)[1], 16) != port:
                continue
            inode = fields[9]
            if inode == "0":  # TIME_WAIT and the like: no socket left, no process
                continue
            (listening if fields[3] == _LISTEN else bound).add(inode)
    return listening or bound


def _command(entry: Path) -> str:
    try:
        raw = (entry / "cmdline").read_bytes()
    except OSError:
        return "?"
    command = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    if not command:  # a kernel thread, or a zombie
        try:
            command = f"[{(entry / 'comm').read_text().strip()}]"
        except OSError:
            return "?"
    return command if len(command) <= 200 else command[:197] + "..."


def describe_holders(port: int) -> str:
    """`pid 123 (python -m http.server 8000)`, or why no process can be named."""
    holders = port_holders(port)
    if not holders:
        return "no process this user can see (another user's, a container's, or a socket bound without listening)"
    return ", ".join(f"pid {h.pid} ({h.command})" for h in holders)
