"""A task that runs its worker out of memory: the kernel's OOM killer, for real where the sandbox allows.

The test makes a memory cgroup with a small limit (cgroup v2, or the v1
memory hierarchy, under this process's own cgroup; it needs root or a
delegated cgroup) and the task moves its worker into it and allocates past
the limit, so the kernel's OOM killer ends the worker with SIGKILL, exactly
as on a node that runs out of memory. Where no cgroup can be made, the
worker delivers itself SIGKILL halfway through the allocation instead: the
same signal from outside the node's own code, so the node's path (LOST,
retried, then failed naming memory) is the same.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import tasks
from conftest import target

import achilles_like as al
from achilles_like import JobFailedError, LocalCluster

LIMIT = 32 << 20  # the cgroup's memory limit
ALLOCATION_MB = 128  # what the task touches: four times the limit


def own_memory_cgroup() -> tuple[Path, str] | None:
    """This process's memory cgroup directory and the file that sets a limit there, if there is one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        unified = Path("/sys/fs/cgroup/cgroup.controllers")
        if controllers == "" and unified.exists() and "memory" in unified.read_text().split():
            return Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
    return None


def oom_kills(cgroup: Path) -> int:
    """How many processes the kernel's OOM killer ended in ``cgroup`` (v2 memory.events, v1 oom_control)."""
    for name in ("memory.events", "memory.oom_control"):
        if (cgroup / name).exists():
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


@pytest.fixture
def memory_cgroup() -> Iterator[Path | None]:
    """A fresh memory cgroup limited to 32 MiB, or None where the sandbox does not allow one."""
    own = own_memory_cgroup()
    if own is None:
        yield None
        return
    parent, limit_file = own
    cgroup = parent / f"achilles-oom-test-{os.getpid()}"
    try:
        cgroup.mkdir()
        (cgroup / limit_file).write_text(str(LIMIT))
        if (cgroup / "memory.swap.max").exists():
            (cgroup / "memory.swap.max").write_text("0")  # run out of memory, not into swap
        elif (cgroup / "memory.memsw.limit_in_bytes").exists():
            (cgroup / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
    except OSError:
        if cgroup.exists():
            cgroup.rmdir()
        yield None
        return
    try:
        yield cgroup
    finally:
        cgroup.rmdir()  # empty again: the workers that joined it are dead


def test_a_worker_killed_for_memory_is_retried_then_its_task_fails_naming_memory(
    memory_cgroup: Path | None,
) -> None:
    """A task that runs its worker out of memory on every attempt is retried, then fails naming memory."""
    func = functools.partial(tasks.allocate_in_cgroup, str(memory_cgroup or ""), ALLOCATION_MB)
    with LocalCluster(nodes=1, processes=1) as cluster:
        with pytest.raises(JobFailedError) as caught:
            al.map(func, [3], **target(cluster))
        message = str(caught.value)
        assert "lost (its worker process died (exit code -9: SIGKILL, which the node did not send" in message
        assert "out-of-memory killer" in message
        assert "4 times" in message  # retried like any lost task, then failed
        assert al.map(tasks.square, range(4), **target(cluster)) == [0, 1, 4, 9]  # the node is fine
    if memory_cgroup is not None:
        assert oom_kills(memory_cgroup) == 4  # the kernel did it, once per attempt
