"""What Linux's /proc says about a mirror's processes: a supervisor's workers, whether one is
alive, and which worker holds which client connections (the kernel hands each connection on
the shared port to one of them), so a test can see its clients spread over the workers."""

from __future__ import annotations

from pathlib import Path

_ESTABLISHED = "01"  # the `st` column of /proc/net/tcp


def children(pid: int) -> list[int]:
    """The processes `pid` started that still exist (a supervisor's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (dead) parent's reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def connections_on(pid: int, port: int) -> int:
    """How many established TCP connections to local `port` process `pid` holds: the
    clients it accepted and has not closed."""
    sockets = _socket_inodes(pid)
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == _ESTABLISHED and fields[9] in sockets:
                count += 1
    return count


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets among `pid`'s open files."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes
