"""Tests for ``achilles_like.node.claims``: which queued tasks a worker may still start (in one process)."""

from __future__ import annotations

from achilles_like.node.claims import ClaimBoard


def test_a_worker_claims_every_task_nobody_took_back() -> None:
    """Without a take-back every claim succeeds and ``started`` follows the last one."""
    board = ClaimBoard()
    assert board.started == 0
    assert [board.claim(seq) for seq in (1, 2, 3)] == [True, True, True]
    assert board.started == 3


def test_tasks_taken_back_are_skipped_and_later_ones_run() -> None:
    """A take-back returns the first unclaimed task; those up to it are skipped, the next written ones run."""
    board = ClaimBoard()
    assert board.claim(1)
    assert board.take_back(5) == 2  # tasks 2, 3, 4 were written and not claimed
    assert [board.claim(seq) for seq in (2, 3, 4)] == [False, False, False]
    assert board.started == 1  # skipping claims nothing
    assert board.claim(5)


def test_a_second_take_back_covers_the_range_of_the_first() -> None:
    """Taking back again before the worker moved on extends the skipped range from the same start."""
    board = ClaimBoard()
    assert board.take_back(3) == 1
    assert board.take_back(6) == 1
    assert [board.claim(seq) for seq in range(1, 7)] == [False] * 5 + [True]


def test_a_busy_lock_means_nothing_is_taken_back() -> None:
    """While the worker holds the lock the node takes nothing back (None) and the claim stands."""
    board = ClaimBoard()
    board._lock.acquire()
    try:
        assert board.take_back(4) is None
    finally:
        board._lock.release()
    assert board.claim(1)
