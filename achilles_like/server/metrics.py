"""What the server has seen happen: Prometheus metrics and the dashboard's recent history.

::

    ClusterServer.execute(actions) ──observe()──▶ ┌─────────────┐ ──▶ CollectorRegistry ──▶ /metrics
    ServerProtocol bytes, auth    ──one call────▶ │ ServerStats │ ──▶ decorate(status)  ──▶ /api/status,
    ClusterServer.unregister      ──node_left()─▶ └─────────────┘                           STATUS verb

``ServerStats`` is the one observer the server glue calls into: a line per
hook in ``cluster.py``, the bookkeeping here. It watches the scheduler's
actions as the glue carries them out, so it needs no hook inside the
scheduler: an ``AssignTask`` starts a task's clock (and is a retry when its
attempt is above 1), the ``ForwardResult`` of that task stops it (the
scheduler forwards only the current attempt's result, so the pair is the same
(job, task, attempt)), ``JobStarted``/``JobEnded`` bracket a job and are
logged with its counts and duration.

Counters and the run-time histogram live in a private ``CollectorRegistry``
(one per server, so tests can run several in a process); gauges (nodes,
processes, busy, queue, pending) are read from the live status when
scraped. Nothing here ever holds an argument, a result or a secret: only
counts, durations, node names and failure reasons.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from achilles_like.scheduling import actions as act
from achilles_like.server.plain_histogram import PlainHistogram

log = logging.getLogger("achilles_like.server")

RECENT_EVENTS = 10  # failures and node losses the dashboard lists
# Task run times span milliseconds (tiny chunks) to hours (simulations).
TASK_SECONDS_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, float("inf"))

StatusSource = Callable[[], dict[str, Any]]


@dataclass
class _JobRecord:
    """What the server counts about the running job (not kept once it ends)."""

    label: str
    started_at: float
    tasks_done: int = 0
    retries: int = 0
    failures: int = 0  # tasks that raised, or whose worker died or overran
    raised: bool = False  # a task's failed result was forwarded
    # (task id) -> when its current attempt was assigned, for the run-time histogram.
    assigned_at: dict[int, float] = field(default_factory=dict)


class ServerStats:
    """Counts what the server does, for ``/metrics``, the dashboard and the log."""

    def __init__(self, now: Callable[[], float], status: StatusSource, label: Callable[[int], str]) -> None:
        self._now = now
        self._status = status
        # A started job's label; the whole status (every node's entry) is too dear to read per job.
        self._label = label
        self.registry = CollectorRegistry(auto_describe=True)
        self._jobs: dict[int, _JobRecord] = {}
        # Counted on every frame and every task: plain integers, read when Prometheus scrapes
        # (a Counter's inc takes a lock, several times per task; see benchmarks/scale.py).
        self.bytes_in = 0
        self.bytes_out = 0
        self.tasks_completed = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._define_metrics()

    def _define_metrics(self) -> None:
        registry = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, registry=registry)

        registry.register(_HotCounters(self))
        self.failed = counter("achilles_tasks_failed", "Tasks that raised or ran out of attempts.")
        self.retried = counter("achilles_tasks_retried", "Task attempts after the first.")
        self.lost = counter("achilles_tasks_lost", "Tasks whose worker process died or overran.")
        self.node_losses = counter("achilles_node_losses", "Node connections that ended.")
        self.jobs = Counter("achilles_jobs_ended", "Jobs ended, by outcome.", ["outcome"], registry=registry)
        self.auth_failures = Counter(
            "achilles_authentication_failures", "Connections refused by the handshake.", registry=registry
        )
        # Observed once per task: plain numbers, like the hot counters (server/plain_histogram.py).
        self.task_seconds = PlainHistogram(
            "achilles_task_duration_seconds",
            "Time from handing a task to a node to its result (queueing on the node included).",
            TASK_SECONDS_BUCKETS,
        )
        registry.register(self.task_seconds)
        gauges: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
            "achilles_nodes": ("Connected, registered nodes.", lambda s: len(s["nodes"])),
            "achilles_worker_processes": ("Worker processes on all nodes.", _processes),
            "achilles_busy_processes": ("Worker processes running a task.", _busy),
            "achilles_jobs_queued": ("Jobs waiting behind the running one.", lambda s: len(s["queue"])),
            "achilles_job_pending_tasks": ("Tasks of the running job waiting for a node.", _pending),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=registry).set_function(self._reader(read))

    def _reader(self, read: Callable[[dict[str, Any]], float]) -> Callable[[], float]:
        """A gauge's value, read from the live status when Prometheus scrapes."""
        return lambda: float(read(self._status()))

    # -- hooks called by the server glue ---------------------------------------

    def observe(self, actions: list[act.Action]) -> None:
        """Count what the scheduler's actions say happened (called before they are carried out).

        Called for every frame the server handles, with an action or two per task: the
        clock is read once per call, and no pattern matching per action.
        """
        now = self._now()
        for action in actions:
            # Identity tests, not isinstance: nothing subclasses an action, and this runs per task.
            if type(action) is act.AssignTask:
                self._assigned(action.job_id, action.task_id, action.attempt, now)
            elif type(action) is act.ForwardResult:
                self._finished(action.job_id, action.task_id, action.ok, now)
            elif isinstance(action, act.JobStarted):
                self._started(action.job_id)
            elif isinstance(action, act.JobEnded):
                self._ended(action.job_id, action.outcome, action.reason, action.task_id)

    def bytes_received(self, count: int) -> None:
        """A peer sent ``count`` bytes."""
        self.bytes_in += count

    def bytes_sent(self, count: int) -> None:
        """We wrote ``count`` bytes to a peer."""
        self.bytes_out += count

    def auth_failed(self, address: str, reason: str) -> None:
        """A connection failed the handshake."""
        self.auth_failures.inc()
        self._remember("refused", f"{address}: {reason}")

    def task_lost(self, node_id: str, job_id: int, task_id: int, reason: str) -> None:
        """A node's worker died or overran a time limit while running a task."""
        self.lost.inc()
        record = self._jobs.get(job_id)
        if record is not None:
            record.failures += 1
        self._remember("task lost", f"job {job_id} task {task_id} on {node_id}: {reason}")

    def node_left(self, info: dict[str, Any], reason: str) -> None:
        """A registered node's connection ended."""
        self.node_losses.inc()
        name = info.get("name") or info.get("node_id", "?")
        # A dropped node was already logged as a warning with its reason (ServerProtocol.abort).
        log.info("node %s (%r, %s) left: %r", info.get("node_id"), name, info.get("address"), reason)
        self._remember("node left", f"{name} ({info.get('address')}): {reason}")

    # -- reading ---------------------------------------------------------------

    def decorate(self, status: dict[str, Any]) -> dict[str, Any]:
        """Add the running job's rate, ETA, retries and failures, and recent events, to ``status``."""
        job = status.get("job")
        record = None if job is None else self._jobs.get(job["job_id"])
        if job is not None and record is not None:
            elapsed = max(self._now() - record.started_at, 1e-9)
            rate = record.tasks_done / elapsed
            total = job["tasks_received"] if job.get("input_ended") else None
            job.update(
                tasks_total=total,
                rate=rate,
                eta=None if total is None or rate == 0 else (total - job["tasks_done"]) / rate,
                retries=record.retries,
                failures=record.failures,
                elapsed=elapsed,
            )
        status["recent"] = list(self.recent)
        return status

    # -- internals -------------------------------------------------------------

    def _assigned(self, job_id: int, task_id: int, attempt: int, now: float) -> None:
        record = self._jobs.get(job_id)
        if record is not None:
            record.assigned_at[task_id] = now
        if attempt > 1:
            self.retried.inc()
            if record is not None:
                record.retries += 1

    def _finished(self, job_id: int, task_id: int, ok: bool, now: float) -> None:
        record = self._jobs.get(job_id)
        started = None if record is None else record.assigned_at.pop(task_id, None)
        if started is not None:
            self.task_seconds.observe(max(0.0, now - started))
        if ok:
            self.tasks_completed += 1
            if record is not None:
                record.tasks_done += 1
        else:
            self.failed.inc()
            if record is not None:
                record.failures += 1
                record.raised = True

    def _started(self, job_id: int) -> None:
        label = self._label(job_id)
        self._jobs[job_id] = _JobRecord(label=label, started_at=self._now())
        log.info("job %d started: %r", job_id, label)

    def _ended(self, job_id: int, outcome: act.JobOutcome, reason: str, task_id: int | None) -> None:
        self.jobs.labels(outcome.value).inc()
        record = self._jobs.pop(job_id, None)
        if record is None:  # ended while queued: it never started
            log.info("job %d ended while queued: %s %r", job_id, outcome.value, reason)
            return
        if outcome is act.JobOutcome.FAILED and task_id is not None and not record.raised:
            self.failed.inc()  # out of attempts: no failed result was forwarded for it
        duration = self._now() - record.started_at
        log.info(
            "job %d ended: %s after %.3fs, %d tasks done, %d retries, %d failures%s",
            job_id,
            outcome.value,
            duration,
            record.tasks_done,
            record.retries,
            record.failures,
            f": {reason!r}" if reason else "",  # peers' words, quoted: they cannot forge a line
        )
        if outcome is act.JobOutcome.FAILED:
            self._remember("job failed", f"job {job_id} {record.label}: {reason}".strip())

    def _remember(self, kind: str, text: str) -> None:
        self.recent.appendleft({"at": self._now(), "kind": kind, "text": text[:300]})


class _HotCounters(Collector):
    """The counters ``ServerStats`` keeps as plain integers, exported as Prometheus counters."""

    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        for name, doc, value in (
            ("achilles_tasks_completed", "Tasks that returned a result.", stats.tasks_completed),
            ("achilles_received_bytes", "Bytes received from every peer.", stats.bytes_in),
            ("achilles_sent_bytes", "Bytes sent to every peer.", stats.bytes_out),
        ):
            yield CounterMetricFamily(name, doc, value=value)


def _processes(status: dict[str, Any]) -> float:
    return float(sum(node.get("processes") or node.get("slots", 0) for node in status["nodes"]))


def _busy(status: dict[str, Any]) -> float:
    """Busy processes: tasks in flight beyond a node's process count are prefetched, not running."""
    return float(sum(min(node["busy"], node.get("processes") or node["busy"]) for node in status["nodes"]))


def _pending(status: dict[str, Any]) -> float:
    job = status.get("job")
    return 0.0 if job is None else float(job["tasks_pending"])
