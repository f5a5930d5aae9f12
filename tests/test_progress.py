"""open_progress: the tqdm sink behind ``progress=`` (off, a bar of our own, or the caller's bar)."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from achilles_like.client.progress import input_length, open_progress


def test_progress_off_gives_no_sink() -> None:
    """progress=False or None costs nothing: there is no bar."""
    assert open_progress(False, 10, "map") is None
    assert open_progress(None, 10, "map") is None


def test_progress_true_draws_a_bar_with_total_and_rate_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """progress=True makes a tqdm bar on stderr that counts items against the total."""
    sink = open_progress(True, 4, "square")
    assert sink is not None
    sink.update(3)
    sink.update(1)
    sink.close()
    err = capsys.readouterr().err
    assert "square" in err and "4/4" in err and "item/s" in err


def test_a_callers_bar_is_counted_on_given_a_total_and_left_open() -> None:
    """A tqdm instance passed as progress= gets the updates and the total, and stays open for its owner."""
    stream = io.StringIO()
    bar = tqdm(file=stream, desc="mine")
    sink = open_progress(bar, 5, "ignored")
    assert sink is not None
    sink.update(2)
    sink.close()
    assert (bar.n, bar.total, bar.disable) == (2, 5, False)
    assert "2/5" in stream.getvalue()
    bar.close()


def test_a_callers_total_is_kept() -> None:
    """A bar that already has a total keeps it (the caller may count several calls on one bar)."""
    bar = tqdm(total=100, file=io.StringIO())
    open_progress(bar, 5, "map")
    assert bar.total == 100
    bar.close()


def test_anything_else_is_refused_with_what_to_pass() -> None:
    """progress= of another type raises TypeError naming the accepted values."""
    with pytest.raises(TypeError, match="progress= must be True, False, None or a tqdm"):
        open_progress("yes", 3, "map")  # type: ignore[arg-type]


def test_input_length_never_consumes_the_input() -> None:
    """A list or range has a length; a generator has none and is left untouched."""
    numbers = (x for x in range(3))
    assert (input_length([1, 2]), input_length(range(7)), input_length(numbers)) == (2, 7, None)
    assert list(numbers) == [0, 1, 2]
