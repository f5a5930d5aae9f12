"""The words a node uses for a worker that died: each exit code, one row."""

from __future__ import annotations

import pytest

from achilles_like.node.exit_reason import describe_exit

CASES = {
    "exited": (7, "its worker process died (exit code 7)"),
    "sigkill": (
        -9,
        "its worker process died (exit code -9: SIGKILL, which the node did not send; most likely",
    ),
    "segfault": (-11, "its worker process died (exit code -11: SIGSEGV, a crash in native code)"),
    "sigterm": (-15, "its worker process died (exit code -15: SIGTERM)"),
    "unknown-signal": (-200, "its worker process died (exit code -200: signal 200)"),
    "not-reaped": (None, "its worker process died (exit code unknown)"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_exit_is_described(name: str) -> None:
    """An exit code, a crash signal, SIGKILL, another signal and an unknown code each get their words."""
    code, start = CASES[name]
    assert describe_exit(code).startswith(start)


def test_only_an_outside_sigkill_names_memory() -> None:
    """SIGKILL (what the kernel's OOM killer sends) names memory as the likely cause; nothing else does."""
    assert "out-of-memory" in describe_exit(-9)
    assert all("memory" not in describe_exit(code) for code in (7, -11, -15, None))
