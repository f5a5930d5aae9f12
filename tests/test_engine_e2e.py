"""One engine, end to end: shared connections, idle jobs that yield the cluster, cancel on abandon."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest
import tasks
from conftest import status_of, target, wait_until

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.client import shared


@pytest.fixture(scope="module")
def small() -> Iterator[LocalCluster]:
    """One server and one node of two processes for this module."""
    with LocalCluster(nodes=1, processes=2) as running:
        yield running


def test_sequential_maps_share_one_connection(small: LocalCluster) -> None:
    """200 one-item maps in a row open one controller connection between them, not one each."""
    shared.close_all()
    before = status_of(small)["connections"]["controller"]
    results = [al.map(tasks.square, [i], **target(small)) for i in range(200)]
    assert results == [[i * i] for i in range(200)]
    assert status_of(small)["connections"]["controller"] - before == 1


def test_module_functions_from_many_threads_share_the_connection(small: LocalCluster) -> None:
    """Calls from 8 threads at once run as separate jobs on one connection, each with exact results."""
    shared.close_all()
    before = status_of(small)["connections"]["controller"]
    with concurrent.futures.ThreadPoolExecutor(8) as threads:
        futures = [threads.submit(al.map, tasks.square, range(n, n + 30), **target(small)) for n in range(8)]
        assert [f.result(timeout=120) for f in futures] == [
            [x * x for x in range(n, n + 30)] for n in range(8)
        ]
    assert status_of(small)["connections"]["controller"] - before == 1


def test_an_unconsumed_imap_does_not_hold_the_cluster(small: LocalCluster) -> None:
    """An imap whose results nobody reads stops sending; another controller's map then runs at once."""
    endless = al.imap(tasks.square, iter(int, 1), **target(small))  # zeros, forever
    assert next(endless) == 0
    try:
        with al.Pool(host=small.host, port=small.port, secret_key=small.secret_key) as pool:
            result = pool.map_async(tasks.square, range(20))
            assert result.get(timeout=60) == [x * x for x in range(20)]
    finally:
        endless.close()


def test_a_pool_used_from_eight_threads_gives_exact_results(small: LocalCluster) -> None:
    """apply, map and imap from 8 threads at once on one Pool each get exactly their own results."""
    errors: list[BaseException] = []
    with al.Pool(host=small.host, port=small.port, secret_key=small.secret_key) as pool:

        def work(n: int) -> None:
            try:
                assert pool.apply(tasks.square, (n,)) == n * n
                assert pool.map(tasks.square, range(n, n + 40), chunksize=3) == [
                    x * x for x in range(n, n + 40)
                ]
                assert list(pool.imap(tasks.square, range(n), chunksize=2)) == [x * x for x in range(n)]
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []


def test_breaking_out_of_imap_cancels_the_rest_on_the_cluster(small: LocalCluster) -> None:
    """Leaving an imap loop early cancels its job: the node goes idle without finishing the input."""
    done_before = status_of(small)["jobs_done"]
    for value in al.imap(tasks.slow_square, range(10_000), **target(small)):
        if value == 4:
            break
    wait_until(lambda: status_of(small)["job"] is None, what="the abandoned job to be cancelled")
    wait_until(lambda: status_of(small)["nodes"][0]["busy"] == 0, what="the node to go idle")
    assert status_of(small)["jobs_done"] == done_before  # cancelled, not finished


def test_a_pool_job_outlives_many_other_jobs(small: LocalCluster) -> None:
    """A Pool's job idles while a dozen other jobs run and end; its next call (a new function) still runs."""
    with al.Pool(host=small.host, port=small.port, secret_key=small.secret_key) as pool:
        assert pool.apply(tasks.square, (3,)) == 9
        for i in range(12):
            assert al.map(tasks.square, [i], **target(small)) == [i * i]
        assert pool.apply(tasks.negate, (3,)) == -3
