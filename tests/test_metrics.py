"""ServerStats: what the server counts for /metrics and the dashboard, on a fake clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_server_glue import authenticate, connect, make_server

from achilles_like.scheduling import actions as act
from achilles_like.server.metrics import ServerStats


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job_label(job_id: int) -> str:
    return "square" if job_id == 1 else ""


def idle_status() -> dict[str, Any]:
    """A status with one busy node of two processes and a running job 1."""
    return {
        "nodes": [{"node_id": "n1", "processes": 2, "slots": 4, "busy": 3, "tasks_done": 0}],
        "job": {"job_id": 1, "label": "square", "tasks_received": 4, "tasks_done": 1, "tasks_pending": 2},
        "queue": [{"job_id": 2}],
    }


def samples(stats: ServerStats) -> dict[str, float]:
    """Every sample of the registry, parsed back from the exposition format, by name and labels."""
    text = generate_latest(stats.registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def test_results_retries_and_run_times_are_counted() -> None:
    """A task assigned twice counts one retry; its result stops its clock and counts one completion."""
    clock = FakeClock()
    stats = ServerStats(clock, idle_status, job_label)
    stats.observe([act.JobStarted("c1", 1), act.AssignTask("n1", 1, 0, 1, b"x")])
    stats.observe([act.AssignTask("n2", 1, 0, 2, b"x")])  # the first node was lost
    clock.now += 2.5
    stats.observe([act.ForwardResult("c1", 1, 0, True, b"r")])
    found = samples(stats)
    assert found["achilles_tasks_retried_total"] == 1
    assert found["achilles_tasks_completed_total"] == 1
    assert found["achilles_task_duration_seconds_count"] == 1
    assert found["achilles_task_duration_seconds_sum"] == 2.5
    assert found["achilles_task_duration_seconds_bucket{le=1.0}"] == 0
    assert found["achilles_task_duration_seconds_bucket{le=5.0}"] == 1


def test_gauges_read_the_live_status() -> None:
    """Nodes, processes, busy (capped at processes), queued jobs and pending tasks come from the status."""
    found = samples(ServerStats(FakeClock(), idle_status, job_label))
    assert found["achilles_nodes"] == 1
    assert found["achilles_worker_processes"] == 2
    assert found["achilles_busy_processes"] == 2  # three in flight, one of them prefetched
    assert found["achilles_jobs_queued"] == 1
    assert found["achilles_job_pending_tasks"] == 2


def test_a_raising_task_counts_one_failure_and_ends_its_job_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed result counts once (not again at the job's end) and the job's end is logged with counts."""
    clock = FakeClock()
    stats = ServerStats(clock, idle_status, job_label)
    caplog.set_level(logging.INFO, logger="achilles_like.server")
    stats.observe([act.JobStarted("c1", 1), act.AssignTask("n1", 1, 0, 1, b"x")])
    clock.now += 1
    stats.observe(
        [
            act.ForwardResult("c1", 1, 0, False, b"e"),
            act.JobEnded("c1", 1, act.JobOutcome.FAILED, "task 0 raised", 0),
        ]
    )
    found = samples(stats)
    assert found["achilles_tasks_failed_total"] == 1
    assert found["achilles_jobs_ended_total{outcome=failed}"] == 1
    assert "job 1 started: 'square'" in caplog.text  # peers' words are quoted
    ended = "job 1 ended: failed after 1.000s, 0 tasks done, 0 retries, 1 failures: 'task 0 raised'"
    assert ended in caplog.text
    assert stats.recent[0]["kind"] == "job failed"


def test_a_task_out_of_attempts_counts_as_failed() -> None:
    """A job failed by a task lost too often counts that task as failed although no result came."""
    stats = ServerStats(FakeClock(), idle_status, job_label)
    stats.observe([act.JobStarted("c1", 1)])
    stats.task_lost("n1", 1, 0, "worker process died (exit code -9)")
    stats.observe([act.JobEnded("c1", 1, act.JobOutcome.FAILED, "lost 4 times", 0)])
    found = samples(stats)
    assert found["achilles_tasks_failed_total"] == 1
    assert found["achilles_tasks_lost_total"] == 1
    assert [event["kind"] for event in stats.recent] == ["job failed", "task lost"]
    assert "exit code -9" in stats.recent[1]["text"]


def test_decorate_adds_rate_eta_retries_and_failures() -> None:
    """The running job gets a rate, and an ETA once its total is known."""
    clock = FakeClock()
    stats = ServerStats(clock, idle_status, job_label)
    stats.observe([act.JobStarted("c1", 1)])
    for task in range(2):
        stats.observe([act.AssignTask("n1", 1, task, 1, b"x")])
        stats.observe([act.ForwardResult("c1", 1, task, True, b"r")])
    clock.now += 4
    status = idle_status()
    status["job"].update(tasks_done=2, input_ended=False)
    job = stats.decorate(status)["job"]
    assert (job["rate"], job["tasks_total"], job["eta"], job["retries"], job["failures"]) == (
        0.5,
        None,
        None,
        0,
        0,
    )
    status["job"].update(input_ended=True, tasks_received=10)
    assert stats.decorate(status)["job"]["eta"] == 16.0


def test_recent_events_are_bounded() -> None:
    """Only the last few failures and node losses are kept, newest first."""
    stats = ServerStats(FakeClock(), idle_status, job_label)
    for number in range(50):
        stats.node_left({"node_id": f"n{number}", "name": "box", "address": "10.0.0.1:1"}, "gone")
    assert len(stats.recent) == 10
    assert stats.recent[0]["text"].startswith("box (10.0.0.1:1)")


def test_server_glue_counts_bytes_and_refused_handshakes() -> None:
    """The glue's one-line hooks count bytes both ways and every failed handshake."""
    server, _ = make_server()
    protocol, transport = connect(server)
    authenticate(protocol, transport, "wrong secret", "controller")
    found = samples(server.events)
    assert found["achilles_authentication_failures_total"] == 1
    assert found["achilles_received_bytes_total"] > 0
    assert found["achilles_sent_bytes_total"] > 0
    assert server.status()["recent"][0]["kind"] == "refused"
