"""``progress=``: the tqdm sink behind it, and every map-like call counting its items on a bar."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import tasks
from conftest import target
from tqdm import tqdm

import achilles_like as al
from achilles_like import LocalCluster
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


# -- progress= end to end, on every map-like call ---------------------------------------------


@pytest.fixture(scope="module")
def progress_cluster() -> Iterator[LocalCluster]:
    """One server and one node of two processes."""
    with LocalCluster(nodes=1, processes=2) as running:
        yield running


CALLS = {
    "map": lambda c, bar: al.map(tasks.square, range(30), progress=bar, **target(c)),
    "imap": lambda c, bar: list(al.imap(tasks.square, range(30), progress=bar, **target(c))),
    "imap_unordered": lambda c, bar: sorted(
        al.imap_unordered(tasks.square, range(30), progress=bar, **target(c))
    ),
}
POOL_CALLS = {
    "Pool.map": lambda pool, bar: pool.map(tasks.square, range(30), progress=bar),
    "Pool.starmap": lambda pool, bar: pool.starmap(tasks.square, [(x,) for x in range(30)], progress=bar),
    "Pool.imap": lambda pool, bar: list(pool.imap(tasks.square, range(30), 4, progress=bar)),
    "Pool.imap_unordered": lambda pool, bar: sorted(
        pool.imap_unordered(tasks.square, range(30), 4, progress=bar)
    ),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_module_functions_count_every_item_on_a_callers_bar(
    progress_cluster: LocalCluster, name: str
) -> None:
    """map, imap and imap_unordered move a caller's bar to the input's length and give it the total."""
    bar = tqdm(file=io.StringIO())
    assert CALLS[name](progress_cluster, bar) == [x * x for x in range(30)]
    assert (bar.n, bar.total) == (30, 30)


@pytest.mark.parametrize("name", list(POOL_CALLS))
def test_pool_methods_count_every_item_on_a_callers_bar(progress_cluster: LocalCluster, name: str) -> None:
    """Pool.map, starmap, imap and imap_unordered move a caller's bar to the input's length."""
    cluster = progress_cluster
    with al.Pool(host=cluster.host, port=cluster.port, secret_key=cluster.secret_key) as pool:
        bar = tqdm(file=io.StringIO())
        assert POOL_CALLS[name](pool, bar) == [x * x for x in range(30)]
    assert (bar.n, bar.total) == (30, 30)


def test_executor_map_and_progress_true_draw_on_stderr(
    progress_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Executor.map(progress=True) draws a bar with the count and total on stderr."""
    with al.ProcessPoolExecutor(
        host=progress_cluster.host, port=progress_cluster.port, secret_key=progress_cluster.secret_key
    ) as executor:
        results = list(executor.map(tasks.square, range(12), chunksize=3, progress=True))
    assert results == [x * x for x in range(12)]
    assert "12/12" in capsys.readouterr().err


def test_a_bad_progress_value_is_refused_before_anything_runs(progress_cluster: LocalCluster) -> None:
    """progress= of the wrong type raises TypeError naming what to pass."""
    with pytest.raises(TypeError, match="progress=True"):
        al.map(tasks.square, range(3), progress="yes", **target(progress_cluster))  # type: ignore[arg-type]
