"""Per-process CPU time and peak memory of a running cluster, read from Linux ``/proc``.

``bench_map.py`` uses these to split the framework's cost over the processes
a task crosses (controller, server, node, workers) and to see how much memory
each hop reserves for a large body. Nothing here needs ``psutil``: the
figures come straight from ``/proc/<pid>/stat`` and ``/proc/<pid>/status``,
so they are Linux only; elsewhere the rows that need them say so.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

#: Clock ticks per second of ``utime``/``stime`` in ``/proc/<pid>/stat``.
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_available() -> bool:
    """Whether this system has a Linux-style ``/proc`` to read."""
    return Path("/proc/self/stat").exists()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread), at full resolution."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (a node's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` figure from ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} is not in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset a process's peak RSS (VmHWM) to its current RSS; False if the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
