"""End-to-end tests of map, imap and imap_unordered on a real local cluster.

Every test talks to a real server and real nodes (subprocesses on 127.0.0.1,
started by the ``cluster`` / ``fresh_cluster`` fixtures) through the public
API, and asserts exact results.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import inspect
import itertools
import os
import pickle
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dill
import pytest
import tasks
from conftest import status_of, target, wait_until

import achilles_like as al
from achilles_like import ClusterConnectionError, LocalCluster

API: dict[str, Callable[..., Any]] = {"map": al.map, "imap": al.imap, "imap_unordered": al.imap_unordered}

MB10 = 10_000_000
# Three distinct ~10 MB items of different lengths, so a swap or a truncation shows.
BIG_ITEMS = [os.urandom(MB10), os.urandom(MB10 + 1), os.urandom(MB10 - 1)]


def numbers() -> Iterator[int]:
    """A generator FUNCTION: achilles calls it when it is passed as ``args``."""
    yield from range(30)


def materialize(args: Any) -> list[Any]:
    """What the builtin map sees: a generator function is called first, as achilles does."""
    return list(args() if inspect.isgeneratorfunction(args) else args)


def run(api: str, func: Callable[..., Any], args: Any, **kwargs: Any) -> list[Any]:
    """Call one API function and collect everything it yields."""
    return list(API[api](func, args, **kwargs))


def assert_same_items(results: list[Any], expected: list[Any]) -> None:
    """``results`` holds exactly the items of ``expected`` (as a multiset), in any order.

    Sorting needs orderable items; this works for dicts and 10 MB bytes alike.
    """
    assert len(results) == len(expected)
    remaining = list(expected)
    for value in results:
        assert value in remaining, f"unexpected or duplicated result {value!r:.80}"
        remaining.remove(value)
    assert remaining == []


def check(api: str, results: list[Any], expected: list[Any]) -> None:
    """Exact equality for ordered APIs, multiset equality for imap_unordered."""
    if api == "imap_unordered":
        assert_same_items(results, expected)
    else:
        assert results == expected


class CountingInput:
    """Wraps an iterable and counts how many items the controller pulled from it."""

    def __init__(self, source: Iterable[Any]) -> None:
        self.source = iter(source)
        self.pulled = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        value = next(self.source)
        self.pulled += 1
        return value


# (id, function, factory of fresh args) -- a factory, because generators are single-use.
CASES: list[tuple[str, Callable[..., Any], Callable[[], Any]]] = [
    ("ints", tasks.square, lambda: range(200)),
    ("crlf-strings", tasks.identity, lambda: ["a\r\nb", "\r\n", "x\r\n\r\ny", "", "\n\r", "plain"]),
    ("delimiter-pickles", tasks.identity, lambda: [{"ARG": [2573]}, 2573, [2573, {"ARG": [2573]}]]),
    ("nested-lists", len, lambda: [[1, 2], [3], []]),
    ("10MB-bytes-length", tasks.length, lambda: BIG_ITEMS),
    ("10MB-bytes-identity", tasks.identity, lambda: BIG_ITEMS[:1]),
    ("generator-expression", tasks.square, lambda: (x * 3 for x in range(50))),
    ("generator-function", tasks.square, lambda: numbers),
]


def test_delimiter_cases_really_contain_the_delimiter() -> None:
    """The pickles of ``{'ARG': [2573]}`` and ``2573`` contain ``\\r\\n`` (the old line delimiter)."""
    for item in ({"ARG": [2573]}, 2573):
        assert b"\r\n" in pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        assert b"\r\n" in pickle.dumps(item)


def test_status_has_the_documented_shape(cluster: LocalCluster) -> None:
    """getClusterStatus returns nodes (address, processes, busy, tasks_done), job and queue."""
    wait_until(lambda: all(n["busy"] == 0 for n in status_of(cluster)["nodes"]), what="idle nodes")
    status = al.getClusterStatus(**target(cluster))
    assert isinstance(status, dict)
    assert {"nodes", "job", "queue"} <= set(status)
    assert len(status["nodes"]) == 2
    for node in status["nodes"]:
        assert {"address", "processes", "busy", "tasks_done"} <= set(node)
        assert node["address"].startswith("127.0.0.1:")
        assert node["processes"] == 2
        assert node["busy"] == 0
        assert isinstance(node["tasks_done"], int)
    assert status["job"] is None
    assert status["queue"] == []


@pytest.mark.parametrize("chunksize", [1, 7])
@pytest.mark.parametrize("api", list(API))
@pytest.mark.parametrize(("func", "make_args"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_results_equal_builtin_map(
    cluster: LocalCluster, api: str, func: Callable[..., Any], make_args: Callable[[], Any], chunksize: int
) -> None:
    """Each API returns exactly what the builtin map returns (as a multiset for imap_unordered)."""
    expected = list(builtins.map(func, materialize(make_args())))
    results = run(api, func, make_args(), chunksize=chunksize, **target(cluster))
    check(api, results, expected)


def test_ten_megabyte_item_comes_back_intact(cluster: LocalCluster) -> None:
    """A 10 MB bytes item sent through identity comes back byte for byte."""
    [echoed] = al.map(tasks.identity, BIG_ITEMS[:1], **target(cluster))
    assert type(echoed) is bytes
    assert len(echoed) == MB10
    assert echoed == BIG_ITEMS[0]


@pytest.mark.parametrize("api", list(API))
def test_empty_input_gives_empty_result(cluster: LocalCluster, api: str) -> None:
    """An empty input gives an empty result list."""
    assert run(api, tasks.square, [], **target(cluster)) == []
    assert run(api, tasks.square, iter(()), chunksize=7, **target(cluster)) == []


@pytest.mark.parametrize("api", list(API))
def test_callback_runs_on_each_result(cluster: LocalCluster, api: str) -> None:
    """``callback`` is applied (on the node) to every result: map(square, xs, callback=negate)."""
    xs = list(range(-20, 40))
    results = run(api, tasks.square, xs, callback=tasks.negate, chunksize=3, **target(cluster))
    check(api, results, [-x * x for x in xs])


def test_lambdas_and_closures_work(cluster: LocalCluster) -> None:
    """Lambdas and closures over local variables are shipped by value and run on the nodes."""
    k = 17
    offset = -3

    def scaled(x: int) -> int:
        return x * k + offset

    assert al.map(lambda x: x + k, range(50), **target(cluster)) == [x + 17 for x in range(50)]
    assert list(al.imap(scaled, range(50), chunksize=4, **target(cluster))) == [x * 17 - 3 for x in range(50)]
    assert al.map(tasks.square, range(10), callback=lambda y: y + k, **target(cluster)) == [
        x * x + 17 for x in range(10)
    ]


def test_two_nodes_share_the_work(fresh_cluster: LocalCluster) -> None:
    """A job of 40 slow items runs on both nodes and on several worker processes, none the node agent."""
    assert al.map(tasks.slow_square, range(40), **target(fresh_cluster)) == [x * x for x in range(40)]
    nodes = status_of(fresh_cluster)["nodes"]
    assert len(nodes) == 2
    assert all(node["tasks_done"] > 0 for node in nodes), nodes
    assert sum(node["tasks_done"] for node in nodes) == 40  # chunksize 1: one task per item, no reruns

    pids = al.map(tasks.slow_pid_of, range(40), **target(fresh_cluster))
    assert len(pids) == 40
    assert 2 <= len(set(pids)) <= 4  # 2 nodes x 2 processes
    assert set(pids).isdisjoint({node["pid"] for node in nodes})  # user code never runs in the agent


def test_imap_is_lazy(cluster: LocalCluster) -> None:
    """imap pulls nothing before the first ``next`` and only a bounded window of input after it."""
    source = CountingInput(range(100_000))
    results = al.imap(tasks.square, source, **target(cluster))
    try:
        assert source.pulled == 0
        assert [next(results) for _ in range(10)] == [x * x for x in range(10)]
        assert 10 <= source.pulled <= 1100  # the credit window plus the bounded reorder buffer
    finally:
        results.close()
    wait_until(lambda: status_of(cluster)["job"] is None, what="the abandoned job to end")


def test_imap_keeps_order_when_items_finish_out_of_order(cluster: LocalCluster, tmp_path: Any) -> None:
    """imap yields in input order though item 0 finishes after others."""
    gate = str(tmp_path / "gate-imap")
    items = [("wait", gate, 0)] + [("open", gate, v) for v in range(1, 12)]
    assert list(al.imap(tasks.gated, items, **target(cluster))) == list(range(12))


def test_imap_unordered_yields_in_completion_order(cluster: LocalCluster, tmp_path: Any) -> None:
    """imap_unordered yields a later item before item 0 when item 0 finishes last; each exactly once."""
    gate = tmp_path / "gate-unordered"
    items = [("wait", str(gate), 0)] + [("plain", str(gate), v) for v in range(1, 12)]
    results = []
    for value in al.imap_unordered(tasks.gated, items, **target(cluster)):
        results.append(value)
        gate.touch()  # item 0 may finish only after a result has reached us
    assert results[0] != 0
    assert sorted(results) == list(range(12))


def test_endless_generator_with_imap_unordered(cluster: LocalCluster) -> None:
    """imap_unordered over itertools.count() pulls a bounded input, and breaking out cancels the job."""
    source = CountingInput(itertools.count())
    seen: list[int] = []
    # No name holds the generator: breaking out drops it, which closes it (and cancels the job).
    for value in al.imap_unordered(tasks.square, source, **target(cluster)):
        seen.append(value)
        if len(seen) == 3000:
            break
    assert len(set(seen)) == 3000
    assert all(value in {x * x for x in range(source.pulled)} for value in seen)
    assert 3000 <= source.pulled <= 3000 + 2000
    wait_until(lambda: status_of(cluster)["job"] is None, what="the endless job to be cancelled")
    assert al.map(tasks.square, range(100), chunksize=7, **target(cluster)) == [x * x for x in range(100)]


def test_abandoned_imap_cancels_its_job(cluster: LocalCluster) -> None:
    """Closing an imap generator after 5 results cancels its job, and the next job runs."""
    results = al.imap(tasks.slow_square, range(1000), **target(cluster))
    assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert status_of(cluster)["job"]["label"] == "slow_square"
    results.close()
    wait_until(lambda: status_of(cluster)["job"] is None, what="the abandoned job to be cancelled")
    assert al.map(tasks.square, range(30), **target(cluster)) == [x * x for x in range(30)]


# -- bad arguments fail at once, before anything is sent ------------------------------------


@pytest.fixture
def dead_target() -> dict[str, Any]:
    """Keyword arguments pointing at a local port where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {"host": "127.0.0.1", "port": port, "secret_key": "unused"}


class HoldsGenerator:
    """A callable whose state dill cannot pickle (a live generator)."""

    def __init__(self) -> None:
        self.source = (i for i in range(3))

    def __call__(self, x: int) -> int:
        return x


def generator_default() -> Callable[[int], int]:
    """A nested function (so dill pickles it by value) whose default argument is a live generator."""

    def with_default(x: int, _state: Iterator[int] = (i for i in range(3))) -> int:
        return x

    return with_default


def test_dead_target_really_is_dead(dead_target: dict[str, Any]) -> None:
    """A valid call to the dead port fails with ClusterConnectionError (so the tests below prove order)."""
    with pytest.raises(ClusterConnectionError):
        al.map(tasks.square, [1], **dead_target)


@pytest.mark.parametrize("api", list(API))
@pytest.mark.parametrize("chunksize", [0, -1, 1.5])
def test_bad_chunksize_fails_before_sending(dead_target: dict[str, Any], api: str, chunksize: Any) -> None:
    """A chunksize that is not a whole number >= 1 raises ValueError at the call, before connecting."""
    with pytest.raises(ValueError, match="chunksize") as caught:
        API[api](tasks.square, range(3), chunksize=chunksize, **dead_target)
    assert not isinstance(caught.value, ClusterConnectionError)


@pytest.mark.parametrize("api", list(API))
def test_non_iterable_fails_before_sending(dead_target: dict[str, Any], api: str) -> None:
    """A non-iterable ``args`` raises a TypeError naming it, before connecting."""
    with pytest.raises(TypeError, match=r"args must be an iterable.*not int"):
        API[api](tasks.square, 42, **dead_target)


@pytest.mark.parametrize("func", [HoldsGenerator(), generator_default()], ids=["attribute", "default-arg"])
@pytest.mark.parametrize("api", list(API))
def test_unpicklable_function_fails_before_sending(
    dead_target: dict[str, Any], api: str, func: Callable[..., Any]
) -> None:
    """A function dill cannot pickle raises a TypeError mentioning pickle, before connecting."""
    with pytest.raises(TypeError):
        dill.dumps(func, recurse=True)  # dill really refuses it
    with pytest.raises(TypeError, match="pickle"):
        API[api](func, range(3), **dead_target)


# -- a second controller's job waits in the queue ---------------------------------------------


def test_second_job_waits_then_runs(fresh_cluster: LocalCluster) -> None:
    """A job submitted while another runs waits in the queue, then both finish with exact results."""
    first_result = threading.Event()
    release_first = threading.Event()

    def first_job() -> list[int]:
        results = al.imap(tasks.slow_square, range(20), **target(fresh_cluster))
        collected = [next(results)]
        first_result.set()
        # Hold the job open (no more input is sent) until the second job is seen queued.
        if not release_first.wait(60):
            raise TimeoutError("never released")
        collected.extend(results)
        return collected

    def second_job() -> list[int]:
        return al.map(tasks.square, range(30), **target(fresh_cluster))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(first_job)
            assert first_result.wait(30), "the first job produced no result"
            second = pool.submit(second_job)
            wait_until(lambda: len(status_of(fresh_cluster)["queue"]) == 1, what="the second job queued")
            status = status_of(fresh_cluster)
            assert status["job"]["label"] == "slow_square"
            assert status["queue"][0]["label"] == "square"
            assert status["queue"][0]["job_id"] > status["job"]["job_id"]
            assert not second.done()
        finally:
            release_first.set()
        assert first.result(timeout=60) == [x * x for x in range(20)]
        assert second.result(timeout=60) == [x * x for x in range(30)]
    wait_until(lambda: status_of(fresh_cluster)["job"] is None, what="both jobs to end")
    assert status_of(fresh_cluster)["queue"] == []


def test_a_node_joining_mid_job_gets_work_at_once(tmp_path: Any) -> None:
    """A node started while a job runs takes some of its tasks; the results stay exact."""
    with LocalCluster(nodes=1, processes=1) as own:
        gate = tmp_path / "joined"
        # Item 0 returns at once; the rest wait until the second node has joined.
        items = [("plain", str(gate), 0)] + [("wait", str(gate), v) for v in range(1, 12)]
        results = []
        for value in al.imap(tasks.gated, items, **target(own)):
            results.append(value)
            if not gate.exists():
                own.add_node(processes=1)  # returns once the server has registered it
                gate.touch()
        assert results == list(range(12))
        done = {node["node_id"]: node["tasks_done"] for node in status_of(own)["nodes"]}
        assert len(done) == 2 and all(count > 0 for count in done.values()), done
