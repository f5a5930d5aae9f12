"""Soak test: jobs run for N minutes on a LocalCluster while a chaos thread hurts its nodes.

Run: ``python benchmarks/soak.py --minutes N [--nodes 3] [--processes 2] [--seed S]``

The main thread runs jobs back to back, ``achilles_like.map`` or
``imap_unordered`` (picked at random) of 200–400 items through
``soak_tasks.square`` (``(job, x) -> (job, x, x * x)`` after a 0–20 ms sleep
seeded by ``x``), and checks every result: each item exactly once, the right
value, and in order for ``map``. Meanwhile a chaos thread, at seeded random
intervals, does one of:

- ``node SIGKILL``: SIGKILL a node's whole process group, then start a replacement;
- ``node SIGSTOP``: stop a node's process group for 12–15 s, longer than the
  server's 10 s heartbeat timeout for a node holding tasks (a node holding
  none is dropped only after 30 s, so it may simply carry on), then SIGCONT
  it and check that it is registered again;
- ``worker SIGKILL``: SIGKILL one worker process inside a node;
- ``node SIGTERM``: SIGTERM the node process alone (a graceful leave), then
  start a replacement.

At the end it prints one table (see the notes under it for what each figure
measures) and exits with status 1 if a result was lost, duplicated or wrong,
or a job hung. The seed fixes the jobs and the chaos plan, not the timing.
The cluster's own log lines (warnings) go to a file named in the output.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soak_tasks

import achilles_like
from achilles_like import LocalCluster
from achilles_like.errors import AchillesError

ITEMS = (200, 400)
CHUNKSIZES = (1, 1, 2, 4)
CHAOS_PAUSE = (4.0, 10.0)  # seconds between chaos actions
STOP_SECONDS = (12.0, 15.0)  # a SIGSTOP lasts this long: over the 10 s heartbeat timeout
TERM_GRACE = 20.0  # a node gets this long to leave after SIGTERM
REJOIN_LIMIT = 30.0  # a node woken by SIGCONT must be registered again within this
JOB_LIMIT = 120.0  # a job running longer than this is a hang
SAMPLE_EVERY = 5.0  # seconds between samples of the server's memory and descriptors

KINDS = ("node SIGKILL", "node SIGSTOP", "worker SIGKILL", "node SIGTERM")

Key = tuple[int, int]  # (job, x)


# -- what happened ------------------------------------------------------------------


@dataclass
class ChaosEvent:
    """One chaos action: its kind, its time (``time.time()``) and what it hit."""

    kind: str
    at: float
    node_pid: int  # the node's pid, which is also its process group
    worker_pid: int | None = None  # set for a worker kill: only that process was hit
    note: str = ""


@dataclass
class JobRecord:
    """One job and what its results looked like."""

    number: int
    method: str
    items: int
    chunksize: int
    started: float
    ended: float = 0.0
    missing: int = 0
    duplicated: int = 0
    wrong: int = 0
    undelivered: int = 0  # items without a result because the job raised
    error: str = ""


@dataclass
class Execution:
    """One start of ``soak_tasks.square`` on an item, read from the execution logs."""

    key: Key
    pid: int
    pgid: int
    at: float


@dataclass
class Samples:
    """Resident memory (KiB) and open descriptors of a process, sampled over the run."""

    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def take(self, pid: int) -> None:
        """Add one sample of ``pid``; a vanished process adds nothing."""
        with contextlib.suppress(OSError, ValueError):
            rss, fds = rss_kib(pid), fd_count(pid)
            self.rss.append(rss)
            self.fds.append(fds)


# -- /proc --------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from ``/proc/PID/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> Counter[str]:
    """Open file descriptors of ``pid`` by kind: socket, pipe, anon_inode or file."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kinds[target.split(":[")[0] if ":[" in target else "file"] += 1
    return kinds


@dataclass
class Snapshot:
    """A process's resident memory (KiB) and open descriptors by kind, at one moment."""

    rss: int
    fds: Counter[str]

    @classmethod
    def of(cls, pid: int) -> Snapshot:
        """Take one of ``pid``."""
        return cls(rss_kib(pid), fd_kinds(pid))


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (a node's workers), from ``/proc/PID/task/*/children``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


# -- the cluster's stderr -----------------------------------------------------------

_stderr_lock = threading.Lock()


@contextlib.contextmanager
def children_stderr(path: Path) -> Iterator[None]:
    """Processes started inside this block write their stderr (their log) to ``path``.

    LocalCluster's children inherit file descriptor 2, so it is pointed at the
    file while they start and restored afterwards.
    """
    with _stderr_lock, open(path, "a") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# -- chaos --------------------------------------------------------------------------


class Chaos(threading.Thread):
    """Hurts the cluster's nodes at random intervals until stopped."""

    def __init__(
        self, cluster: LocalCluster, processes: int, rng: random.Random, log_path: Path, t0: float
    ) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.cluster = cluster
        self.processes = processes
        self.rng = rng
        self.log_path = log_path
        self.t0 = t0
        self.stopping = threading.Event()
        self.events: list[ChaosEvent] = []
        self.problems: list[str] = []
        self._plan: list[str] = []
        self.doing = ""  # the action under way, for a hang report
        self._actions: dict[str, Callable[[], ChaosEvent]] = {
            "node SIGKILL": self.kill_node,
            "node SIGSTOP": self.stop_node,
            "worker SIGKILL": self.kill_worker,
            "node SIGTERM": self.term_node,
        }

    def run(self) -> None:
        while not self.stopping.wait(self.rng.uniform(*CHAOS_PAUSE)):
            kind = self._next_kind()
            self.doing = f"{kind} (began at {time.monotonic() - self.t0:.1f} s)"
            try:
                event = self._actions[kind]()
            except (OSError, AchillesError, subprocess.SubprocessError, IndexError) as error:
                self.problem(f"{kind} could not be done: {type(error).__name__}: {error}")
                continue
            finally:
                self.doing = ""
            self.events.append(event)
            say(self.t0, f"chaos: {kind} on node {event.node_pid}: {event.note}")

    def _next_kind(self) -> str:
        """Kinds come in shuffled rounds, so that every kind happens about as often."""
        if not self._plan:
            self._plan = self.rng.sample(KINDS, len(KINDS))
        return self._plan.pop()

    def problem(self, message: str) -> None:
        """Record something the cluster did wrong (or the soak could not do)."""
        self.problems.append(message)
        say(self.t0, f"PROBLEM: {message}")

    def _pick(self) -> subprocess.Popen[str]:
        live = [node for node in self.cluster.nodes if node.poll() is None]
        return self.rng.choice(live)

    def _replace(self) -> str:
        started = time.monotonic()
        with children_stderr(self.log_path):
            node = self.cluster.add_node(self.processes)
        return f"replacement node {node.pid} registered in {time.monotonic() - started:.1f} s"

    def kill_node(self) -> ChaosEvent:
        """SIGKILL a node's process group, then start a replacement."""
        node = self._pick()
        event = ChaosEvent("node SIGKILL", time.time(), node.pid)
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(10)
        event.note = self._replace()
        return event

    def stop_node(self) -> ChaosEvent:
        """SIGSTOP a node's process group past the heartbeat timeout, SIGCONT it, see it rejoin."""
        node = self._pick()
        seconds = self.rng.uniform(*STOP_SECONDS)
        event = ChaosEvent("node SIGSTOP", time.time(), node.pid)
        os.killpg(node.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.killpg(node.pid, signal.SIGCONT)
        event.note = f"stopped {seconds:.1f} s; " + self._await_rejoin(node.pid)
        return event

    def _await_rejoin(self, pid: int) -> str:
        started = time.monotonic()
        while time.monotonic() - started < REJOIN_LIMIT:
            if pid in node_pids(self.cluster):
                return f"registered again {time.monotonic() - started:.1f} s after SIGCONT"
            time.sleep(0.2)
        self.problem(f"node {pid} did not register again within {REJOIN_LIMIT:.0f} s of SIGCONT")
        return "did not rejoin"

    def kill_worker(self) -> ChaosEvent:
        """SIGKILL one worker process of a node."""
        node = self._pick()
        workers = children(node.pid)
        if not workers:
            raise IndexError(f"node {node.pid} has no worker processes")
        worker = self.rng.choice(workers)
        event = ChaosEvent("worker SIGKILL", time.time(), node.pid, worker)
        os.kill(worker, signal.SIGKILL)
        event.note = f"killed worker {worker} (of {len(workers)})"
        return event

    def term_node(self) -> ChaosEvent:
        """SIGTERM the node process alone (a graceful leave), then start a replacement."""
        node = self._pick()
        event = ChaosEvent("node SIGTERM", time.time(), node.pid)
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(TERM_GRACE)
            left = f"left in {time.time() - event.at:.1f} s"
        except subprocess.TimeoutExpired:
            self.problem(f"node {node.pid} did not exit within {TERM_GRACE:.0f} s of SIGTERM; SIGKILLed")
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(10)
            left = "did not leave"
        event.note = f"{left}; {self._replace()}"
        return event


def node_pids(cluster: LocalCluster) -> set[int]:
    """Pids of the nodes the server has registered now."""
    status = achilles_like.getClusterStatus(**target_of(cluster))
    return {int(node.get("pid", 0)) for node in status["nodes"]}


def target_of(cluster: LocalCluster) -> dict[str, Any]:
    """Keyword arguments that send a call to ``cluster``."""
    return {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}


def say(t0: float, message: str) -> None:
    """A progress line, stamped with seconds since the start."""
    print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)


# -- jobs ---------------------------------------------------------------------------


def run_job(number: int, rng: random.Random, target: dict[str, Any], receipts: dict[Key, float]) -> JobRecord:
    """Run one job, note when each result arrived, and check the results."""
    count = rng.randint(*ITEMS)
    items = [(number, number * 1000 + i) for i in range(count)]
    method = rng.choice(("map", "imap_unordered"))
    record = JobRecord(number, method, count, rng.choice(CHUNKSIZES), time.time())
    results: list[Any] = []
    try:
        if method == "map":
            results = achilles_like.map(soak_tasks.square, items, chunksize=record.chunksize, **target)
            note_receipts(receipts, results, time.time())
        else:
            for result in achilles_like.imap_unordered(
                soak_tasks.square, items, chunksize=record.chunksize, **target
            ):
                results.append(result)
                note_receipts(receipts, [result], time.time())
    except Exception as error:  # noqa: BLE001 - any failure of a job is a finding to report
        record.error = f"{type(error).__name__}: {error}"
    record.ended = time.time()
    check_results(record, items, results)
    return record


def note_receipts(receipts: dict[Key, float], results: list[Any], now: float) -> None:
    """Remember when each item's first result reached this process."""
    for result in results:
        if isinstance(result, tuple) and len(result) == 3:
            receipts.setdefault((result[0], result[1]), now)


def is_right(result: Any, job: int, expected: set[int]) -> bool:
    """A result of this job, for one of its items, with the right value."""
    if not (isinstance(result, tuple) and len(result) == 3):
        return False
    result_job, x, value = result
    return bool(result_job == job and x in expected and value == x * x)


def check_results(record: JobRecord, items: list[Key], results: list[Any]) -> None:
    """Count missing, duplicated and wrong results (and, for ``map``, out-of-order ones as wrong)."""
    expected = {x for _, x in items}
    seen: Counter[int] = Counter()
    for result in results:
        if is_right(result, record.number, expected):
            seen[result[1]] += 1
        else:
            record.wrong += 1
    record.duplicated = sum(count - 1 for count in seen.values())
    absent = len(expected - seen.keys())
    if record.error:
        record.undelivered = absent
        return
    record.missing = absent
    if record.method == "map" and not (record.wrong or record.duplicated or record.missing):
        record.wrong = sum(1 for result, (_, x) in zip(results, items, strict=True) if result[1] != x)


# -- analysis -----------------------------------------------------------------------


def read_executions(directory: Path) -> list[Execution]:
    """Every recorded start of the task function, from every process's log."""
    executions = []
    for path in directory.glob("*.log"):
        for line in path.read_text().splitlines():
            job, x, pid, pgid, at = line.split()
            executions.append(Execution((int(job), int(x)), int(pid), int(pgid), float(at)))
    return executions


def re_executions(executions: list[Execution]) -> int:
    """Starts of an item beyond its first."""
    starts = Counter(execution.key for execution in executions)
    return sum(count - 1 for count in starts.values())


@dataclass
class Stranded:
    """An item a chaos action cost: it was in flight on what was hit, and had to start again."""

    reassigned: float  # seconds from the action to the item's next start elsewhere
    recovered: float | None  # seconds from the action to its result at the controller


def by_item(executions: list[Execution]) -> dict[Key, list[Execution]]:
    """Executions grouped by item."""
    grouped: dict[Key, list[Execution]] = {}
    for execution in executions:
        grouped.setdefault(execution.key, []).append(execution)
    return grouped


def on_target(event: ChaosEvent, execution: Execution) -> bool:
    """Whether ``execution`` ran in what ``event`` hit: the worker, or any process of the node."""
    if event.worker_pid is not None:
        return execution.pid == event.worker_pid
    return execution.pgid == event.node_pid


def stranded(
    event: ChaosEvent, runs: dict[Key, list[Execution]], receipts: dict[Key, float]
) -> list[Stranded]:
    """The items ``event`` cost, with their reassignment and recovery times.

    An item is stranded when it started on the hit node (or worker) before the
    event, its result had not reached the controller at the event, and it
    started again after the event somewhere else.
    """
    found = []
    for key, starts in runs.items():
        received = receipts.get(key)
        if received is not None and received <= event.at:
            continue
        if not any(on_target(event, run) and run.at < event.at for run in starts):
            continue
        again = [run.at for run in starts if run.at > event.at and not on_target(event, run)]
        if again:
            recovered = None if received is None else received - event.at
            found.append(Stranded(min(again) - event.at, recovered))
    return found


def faulted_items(jobs: list[JobRecord], events: list[ChaosEvent]) -> int:
    """Items of the jobs that were running when a chaos action happened."""
    return sum(job.items for job in jobs if any(job.started <= e.at <= job.ended for e in events))


# -- the soak -----------------------------------------------------------------------


class Soak:
    """The cluster, the jobs run on it and everything measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="achilles-soak-"))
        self.exec_dir = self.directory / "executions"
        self.exec_dir.mkdir()
        self.log_path = self.directory / "cluster.log"
        self.jobs: list[JobRecord] = []
        self.receipts: dict[Key, float] = {}
        self.samples = Samples()
        self.server_snapshots: list[Snapshot] = []
        self.client_snapshots: list[Snapshot] = []
        self.stale: list[int] = []
        self.current_started: float | None = None
        self.current_number = 0
        self.hung = False
        self.job_rng = random.Random(args.seed + 1)
        self.watchdog = Watchdog(self)
        self.cluster = LocalCluster(nodes=args.nodes, processes=args.processes)
        self.chaos: Chaos | None = None

    @property
    def server_pid(self) -> int:
        """The server process's pid."""
        assert self.cluster.server is not None
        return self.cluster.server.pid

    def start(self) -> None:
        """Start the cluster (its log to a file), warm it up and take the first samples."""
        os.environ[soak_tasks.EXEC_LOG_ENV] = str(self.exec_dir)  # nodes inherit it
        with children_stderr(self.log_path):
            self.cluster.start()
        say(self.t0, f"cluster up: {self.cluster!r}; logs and execution records in {self.directory}")
        for _ in range(3):
            self.one_job()
        self.snapshot()
        self.chaos = Chaos(
            self.cluster, self.args.processes, random.Random(self.args.seed), self.log_path, self.t0
        )
        self.chaos.start()
        self.watchdog.start()

    def stale_results(self) -> int:
        """The server's count of results (and losses) that came back for a stale assignment."""
        return int(achilles_like.getClusterStatus(**target_of(self.cluster))["stale_results"])

    def snapshot(self) -> None:
        """Samples of the server and of this process, and the server's stale count."""
        self.server_snapshots.append(Snapshot.of(self.server_pid))
        self.client_snapshots.append(Snapshot.of(os.getpid()))
        self.stale.append(self.stale_results())

    def one_job(self) -> None:
        """Run the next job, with the watchdog looking."""
        number = len(self.jobs) + 1
        self.current_number, self.current_started = number, time.monotonic()
        record = run_job(number, self.job_rng, target_of(self.cluster), self.receipts)
        self.current_started = None
        self.jobs.append(record)
        if record.error or record.missing or record.duplicated or record.wrong:
            say(self.t0, f"job {number} ({record.method}, chunksize {record.chunksize}): {describe(record)}")

    def run(self) -> None:
        """Jobs until the time is up, then stop the chaos and take the last samples."""
        self.start()
        deadline = self.t0 + self.args.minutes * 60
        next_progress = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.one_job()
            if time.monotonic() >= next_progress:
                next_progress += 30
                say(self.t0, progress(self.jobs))
        assert self.chaos is not None
        say(self.t0, "time is up: stopping the chaos (a stopped node is woken first)")
        self.chaos.stopping.set()
        self.chaos.join()
        self.one_job()  # the cluster must still work after the chaos
        self.settle()

    def settle(self) -> None:
        """Wait until every node is registered again, then take the end samples."""
        started = time.monotonic()
        while time.monotonic() - started < REJOIN_LIMIT:
            if len(node_pids(self.cluster)) == self.args.nodes:
                break
            time.sleep(0.5)
        time.sleep(2.0)
        self.snapshot()

    def abort_hung(self) -> None:
        """A job ran past JOB_LIMIT: print what can be seen, the report, and exit 1."""
        self.hung = True
        say(self.t0, f"HANG: job {self.current_number} has run for more than {JOB_LIMIT:.0f} s")
        if self.chaos is not None:
            say(self.t0, f"chaos action under way: {self.chaos.doing or 'none'}")
        with contextlib.suppress(Exception):
            say(self.t0, f"cluster status: {achilles_like.getClusterStatus(**target_of(self.cluster))}")
        faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
        print_report(self)
        threading.Thread(target=self.cluster.shutdown, daemon=True).start()
        time.sleep(15)
        os._exit(1)


class Watchdog(threading.Thread):
    """Samples the server every few seconds and catches a job that hangs."""

    def __init__(self, soak: Soak) -> None:
        super().__init__(name="soak-watchdog", daemon=True)
        self.soak = soak
        self.stopping = threading.Event()

    def run(self) -> None:
        last_sample = 0.0
        while not self.stopping.wait(1.0):
            if time.monotonic() - last_sample >= SAMPLE_EVERY:
                self.soak.samples.take(self.soak.server_pid)
                last_sample = time.monotonic()
            started = self.soak.current_started
            if started is not None and time.monotonic() - started > JOB_LIMIT:
                self.soak.abort_hung()
                return


# -- the report ---------------------------------------------------------------------


def log_summary(path: Path) -> str:
    """The cluster's log lines counted by logger and level (other lines: tracebacks, prints)."""
    counts: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            known = len(words) > 3 and words[2].startswith("achilles_like.")
            counts[f"{words[2].removeprefix('achilles_like.')} {words[3]}" if known else "other"] += 1
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "empty"


def describe(record: JobRecord) -> str:
    """What went wrong with one job."""
    parts = [
        f"{name} {value}" for name in ("missing", "duplicated", "wrong") if (value := getattr(record, name))
    ]
    if record.error:
        parts.append(f"raised {record.error} ({record.undelivered} items without a result)")
    return ", ".join(parts)


def progress(jobs: list[JobRecord]) -> str:
    """A one-line summary of the jobs so far."""
    bad = sum(job.missing + job.duplicated + job.wrong for job in jobs)
    raised = sum(1 for job in jobs if job.error)
    return (
        f"{len(jobs)} jobs, {sum(job.items for job in jobs)} items, {bad} bad results, {raised} jobs raised"
    )


def chaos_rows(soak: Soak, executions: list[Execution]) -> list[tuple[str, str]]:
    """One row per chaos kind: how often, the items it cost, and the longest delays after it."""
    events = soak.chaos.events if soak.chaos else []
    runs = by_item(executions)
    rows = [("chaos actions", f"{len(events)}")]
    everything: list[Stranded] = []
    for kind in KINDS:
        hits = [event for event in events if event.kind == kind]
        items = [item for event in hits for item in stranded(event, runs, soak.receipts)]
        everything += items
        rows.append((f"  {kind}", f"{len(hits)} actions, {len(items)} stranded items, {longest(items)}"))
    rows.append(("longest (all actions)", longest(everything)))
    return rows


def longest(items: list[Stranded]) -> str:
    """The longest reassignment and recovery times of stranded items."""
    if not items:
        return "-"
    reassigned = max(item.reassigned for item in items)
    recovered = max((item.recovered for item in items if item.recovered is not None), default=None)
    result = "-" if recovered is None else f"{recovered:.2f} s"
    return f"re-started after {reassigned:.2f} s, result after {result}"


def report_rows(soak: Soak) -> list[tuple[str, str]]:
    """Every figure of the final table."""
    jobs, executions = soak.jobs, read_executions(soak.exec_dir)
    events = soak.chaos.events if soak.chaos else []
    methods = Counter(job.method for job in jobs)
    stale = soak.stale[-1] - soak.stale[0] if len(soak.stale) == 2 else 0
    rows = [
        ("duration", f"{time.monotonic() - soak.t0:.0f} s"),
        ("jobs", f"{len(jobs)} ({methods['map']} map, {methods['imap_unordered']} imap_unordered)"),
        ("tasks (items)", f"{sum(job.items for job in jobs):,}"),
        *chaos_rows(soak, executions),
        ("items in jobs hit by chaos", f"{faulted_items(jobs, events):,}"),
        ("item re-executions", f"{re_executions(executions):,}"),
        ("server stale_results (delta)", f"{stale:,}"),
        ("results lost", f"{sum(job.missing for job in jobs)}"),
        ("results duplicated", f"{sum(job.duplicated for job in jobs)}"),
        ("results wrong", f"{sum(job.wrong for job in jobs)}"),
        ("jobs that raised", f"{sum(1 for job in jobs if job.error)}"),
        ("jobs hung", "1" if soak.hung else "0"),
        ("problems (chaos)", f"{len(soak.chaos.problems) if soak.chaos else 0}"),
        ("cluster log lines", log_summary(soak.log_path)),
    ]
    return rows + resource_rows(soak)


def drift(before: Snapshot, after: Snapshot) -> tuple[str, str]:
    """Memory and descriptors, ``before -> after (+delta)``, descriptor changes by kind."""
    rss = f"{before.rss:,} -> {after.rss:,} KiB ({after.rss - before.rss:+,})"
    total0, total1 = before.fds.total(), after.fds.total()
    changes = [f"{kind} {after.fds[kind] - before.fds[kind]:+}" for kind in sorted(before.fds | after.fds)]
    changed = [change for change in changes if not change.endswith(" +0")]
    fds = f"{total0} -> {total1} ({total1 - total0:+}{': ' if changed else ''}{', '.join(changed)})"
    return rss, fds


def resource_rows(soak: Soak) -> list[tuple[str, str]]:
    """Memory and descriptor drift of the server and of this controller process."""
    rows = []
    if len(soak.server_snapshots) == 2:
        rss, fds = drift(*soak.server_snapshots)
        rows += [("server RSS", rss), ("server fds", fds)]
    if soak.samples.rss:
        rows.append(("server max RSS / fds seen", f"{max(soak.samples.rss):,} KiB / {max(soak.samples.fds)}"))
    if len(soak.client_snapshots) == 2:
        rss, fds = drift(*soak.client_snapshots)
        rows += [("controller RSS", rss), ("controller fds", fds)]
    return rows


NOTES = """\
notes:
  stranded items: for a chaos action at time T, the items that had started on the hit node (for
    a worker kill: in the hit worker) before T, whose result had not reached the controller at T,
    and that started again after T somewhere else (the execution records show every start).
  re-started after: the longest time from T to a stranded item's next start: detection of the
    fault + re-queue + reassignment, as the task function itself saw it.
  result after: the longest time from T to a stranded item's result reaching the controller;
    for map jobs a result arrives when map() returns, so there it is an upper bound.
  item re-executions: starts of the task function on an item beyond its first (prefetched tasks
    re-queued before they started are not counted); this is the measure of tasks retried.
  server stale_results: results and worker-loss reports the server dropped because the task had
    been re-assigned (or its job had ended) meanwhile, between the first and last samples.
  items in jobs hit by chaos: all items of the jobs running when a chaos action happened.
  RSS and fds: from /proc, after 3 warm-up jobs and at the end (every node registered again);
    server max: samples every 5 s in between. The controller (this process) keeps 2 pipes per
    node it started (LocalCluster holds every node's Popen until shutdown), and its RSS grows
    with the soak's own records (one arrival time per item).
  lost: an item with no result; duplicated: extra results for an item; wrong: a result of another
    job or item, a wrong value, or (map) out of order. Jobs that raised count separately."""


def print_report(soak: Soak) -> None:
    """The final table, the jobs that went wrong, the problems and the notes."""
    rows = report_rows(soak)
    width = max(len(name) for name, _ in rows)
    print()
    print(f"soak: {soak.args.nodes} nodes × {soak.args.processes} processes, seed {soak.args.seed}")
    print(f"{'metric'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    for job in soak.jobs:
        if job.error or job.missing or job.duplicated or job.wrong:
            print(f"job {job.number} ({job.method}, chunksize {job.chunksize}): {describe(job)}")
    for problem in soak.chaos.problems if soak.chaos else []:
        print(f"problem: {problem}")
    print(f"cluster log: {soak.log_path}")
    print(NOTES)


def failed(soak: Soak) -> bool:
    """Whether a result was lost, duplicated or wrong, or a job hung."""
    bad = sum(job.missing + job.duplicated + job.wrong for job in soak.jobs)
    return bool(bad or soak.hung)


def main() -> int:
    """Parse the arguments, soak, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    soak = Soak(args)
    try:
        soak.run()
    finally:
        soak.watchdog.stopping.set()
        if soak.chaos is not None:
            soak.chaos.stopping.set()
            soak.chaos.join()
        soak.cluster.shutdown()
    print_report(soak)
    if failed(soak):
        return 1
    shutil.rmtree(soak.exec_dir, ignore_errors=True)  # kept only when something went wrong
    return 0


if __name__ == "__main__":
    sys.exit(main())
