"""Lifecycle faults with real processes: a node that freezes, leaves or is killed, every node gone,
the server killed and restarted, killCluster under a running job.

Each test starts its own LocalCluster (a server and two nodes of two processes) with short
heartbeats (ping every 0.5 s, drop after 2 s of silence) and a 3 s no-node timeout, so every
fault is detected within seconds. The job's items are ``tasks.gated``: a "wait" item blocks until
a file exists, so which tasks are unfinished when a fault is injected is known, not guessed.
Synchronisation is by ready lines, files and ``wait_until`` on the server's status; every process
is stopped by the cluster's context manager, and a SIGSTOPped node is SIGCONTed in ``finally``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
from conftest import status_of, target, wait_until

import achilles_like as al
from achilles_like import ClusterConnectionError, JobFailedError, LocalCluster
from achilles_like.node.agent import PREFETCH_PER_PROCESS

pytestmark = pytest.mark.timeout(120)

SERVER_ARGS = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2", "--no-node-timeout", "3")
PER_NODE = 2 * PREFETCH_PER_PROCESS  # the tasks a node of 2 processes holds
ITEMS = 4 * PER_NODE  # = the job's credit window: every task is sent at once, half on the nodes, half pending
SQUARES = [x * x for x in range(50)]


@contextlib.contextmanager
def cluster_and_caller() -> Iterator[tuple[LocalCluster, concurrent.futures.ThreadPoolExecutor]]:
    """A two-node cluster with short timeouts, and a thread to run a blocking call in."""
    caller = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with LocalCluster(nodes=2, processes=2, server_args=SERVER_ARGS) as cluster:
            yield cluster, caller
    finally:
        caller.shutdown(wait=True)  # the cluster is gone: a call still running has ended by now


def gated_items(gate: Path) -> list[tuple[str, str, int]]:
    """ITEMS items that each block until ``gate`` exists, then return their index."""
    return [("wait", str(gate), i) for i in range(ITEMS)]


def nodes_by_pid(cluster: LocalCluster) -> dict[int, dict[str, Any]]:
    """The server's node entries, keyed by the node process's pid."""
    return {node["pid"]: node for node in status_of(cluster)["nodes"]}


def wait_for_both_nodes_full(cluster: LocalCluster) -> None:
    """Wait until each node holds its PER_NODE tasks (2 processes × the prefetch) of the running job."""

    def full() -> bool:
        nodes = nodes_by_pid(cluster)
        return len(nodes) == 2 and all(node["busy"] == PER_NODE for node in nodes.values())

    wait_until(full, what=f"both nodes to hold {PER_NODE} tasks each")


def submit_gated_job(
    cluster: LocalCluster, caller: concurrent.futures.ThreadPoolExecutor, gate: Path
) -> concurrent.futures.Future[list[Any]]:
    """Start a blocked job in the caller thread; return once both nodes hold tasks of it."""
    job = caller.submit(al.map, tasks.gated, gated_items(gate), **target(cluster))
    wait_for_both_nodes_full(cluster)
    return job


def test_stopped_node_is_dropped_and_its_tasks_rerun(tmp_path: Path) -> None:
    """A SIGSTOPped node is dropped by heartbeats, its tasks rerun elsewhere, and it rejoins on SIGCONT."""
    gate = tmp_path / "go"
    with cluster_and_caller() as (cluster, caller):
        frozen, other = cluster.nodes
        job = submit_gated_job(cluster, caller, gate)
        old_id = nodes_by_pid(cluster)[frozen.pid]["node_id"]
        cluster.kill_node(0, signal.SIGSTOP)
        try:
            gate.touch()  # its PER_NODE tasks are frozen unfinished: only a re-run can finish them
            assert job.result(timeout=60) == list(range(ITEMS))
            status = status_of(cluster)
            assert [node["pid"] for node in status["nodes"]] == [other.pid]
            assert status["job"] is None
            assert status["jobs_done"] == 1
        finally:
            cluster.kill_node(0, signal.SIGCONT)
        wait_until(lambda: len(status_of(cluster)["nodes"]) == 2, what="the resumed node to rejoin")
        nodes = nodes_by_pid(cluster)
        assert set(nodes) == {frozen.pid, other.pid}
        assert nodes[frozen.pid]["node_id"] != old_id  # a new registration, not the old connection
        assert status_of(cluster)["stale_results"] >= 0  # its late results never reach a job
        slow = functools.partial(tasks.slow_square, delay=0.05)
        assert al.map(slow, range(20), **target(cluster)) == [x * x for x in range(20)]
        nodes = nodes_by_pid(cluster)
        assert all(node["tasks_done"] > 0 for node in nodes.values()), nodes
        assert status_of(cluster)["jobs_done"] == 2


def test_job_fails_when_every_node_is_gone(tmp_path: Path) -> None:
    """With every node SIGKILLed mid-job, the call fails with 'no node has been connected' after ~3 s."""
    with cluster_and_caller() as (cluster, caller):
        job = submit_gated_job(cluster, caller, tmp_path / "never")
        cluster.kill_node(0, signal.SIGKILL)
        cluster.kill_node(1, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(JobFailedError, match=r"no node has been connected for \d+s") as caught:
            job.result(timeout=60)
        waited = time.monotonic() - killed_at
        assert 2.9 <= waited < 20, waited  # the server's 3 s no-node timeout (its own clock)
        assert str(caught.value).startswith("the cluster ended job 1: no node has been connected")
        assert [node.wait(timeout=10) for node in cluster.nodes] == [-signal.SIGKILL] * 2
        status = status_of(cluster)
        assert status["nodes"] == []
        assert status["job"] is None
        added = cluster.add_node()
        assert [node["pid"] for node in status_of(cluster)["nodes"]] == [added.pid]
        assert al.map(tasks.square, range(50), chunksize=3, **target(cluster)) == SQUARES


def test_killed_server_fails_the_call_and_nodes_rejoin_a_restarted_one(tmp_path: Path) -> None:
    """A SIGKILLed server ends the call with ClusterConnectionError; nodes rejoin the restarted server."""
    with cluster_and_caller() as (cluster, caller):
        job = submit_gated_job(cluster, caller, tmp_path / "never")
        server = cluster.server
        assert server is not None
        server.kill()
        assert server.wait(timeout=10) == -signal.SIGKILL
        lost = f"the connection to the server at {cluster.host}:{cluster.port} was lost"
        with pytest.raises(ClusterConnectionError) as caught:
            job.result(timeout=60)
        assert str(caught.value) == lost
        cluster.restart_server()
        assert cluster.server is not server and cluster.server.poll() is None
        wait_until(lambda: len(status_of(cluster)["nodes"]) == 2, what="the nodes to rejoin by themselves")
        assert set(nodes_by_pid(cluster)) == {node.pid for node in cluster.nodes}
        status = status_of(cluster)
        assert status["job"] is None
        assert status["jobs_done"] == 0  # a new server: nothing of the old one survives
        assert al.map(tasks.square, range(50), chunksize=3, **target(cluster)) == SQUARES


def test_node_leaving_gracefully_mid_job_loses_nothing(tmp_path: Path) -> None:
    """A node SIGTERMed mid-job exits 0; its tasks rerun on the other node and the results are exact."""
    gate = tmp_path / "go"
    with cluster_and_caller() as (cluster, caller):
        leaving, staying = cluster.nodes
        job = submit_gated_job(cluster, caller, gate)
        os.kill(leaving.pid, signal.SIGTERM)  # the node alone, not its workers' group
        assert leaving.wait(timeout=20) == 0
        wait_until(lambda: len(status_of(cluster)["nodes"]) == 1, what="the server to drop the node")
        gate.touch()  # only now can a task finish: the leaving node's 4 must be re-run
        assert job.result(timeout=60) == list(range(ITEMS))
        status = status_of(cluster)
        assert [node["pid"] for node in status["nodes"]] == [staying.pid]
        assert status["nodes"][0]["tasks_done"] == ITEMS
        assert status["job"] is None
        assert status["jobs_done"] == 1


def test_kill_cluster_under_a_running_job_fails_it(tmp_path: Path) -> None:
    """killCluster mid-job stops both nodes (exit 0) and the call then fails with 'no node', not a hang."""
    with cluster_and_caller() as (cluster, caller):
        job = submit_gated_job(cluster, caller, tmp_path / "never")  # no task can ever finish
        assert al.killCluster(command_verified=True, **target(cluster)) == 2
        assert [node.wait(timeout=20) for node in cluster.nodes] == [0, 0]
        with pytest.raises(JobFailedError, match=r"no node has been connected for \d+s"):
            job.result(timeout=60)
        status = status_of(cluster)
        assert status["nodes"] == []
        assert status["job"] is None
        assert status["jobs_done"] == 0
