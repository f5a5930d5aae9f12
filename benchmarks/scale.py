"""How far one server goes: a real server and controller, and N simulated nodes in one process.

Run: ``python benchmarks/scale.py [--nodes 1,10,100,1000,2000] [--tasks 20000] [--idle 30]
[--hold 1.0] [--waves 2] [--heartbeat-interval S]``

For each N a fresh server (``LocalCluster(nodes=0)``) is started, and this
process opens N connections to it at once. Each is a simulated node of 4
processes speaking the real protocol from a raw socket (handshake,
``REGISTER``, ``PONG`` to every ``PING``) in one selector loop on a thread
of its own; it answers every ``TASK`` at once with a ``RESULT`` of the right
shape (``ok=1``, the pickled list of one ``None`` per item), or, in the long
task phase, holds every task for ``--hold`` seconds first. A TASK frame of
several tasks is answered by one RESULT frame, as a real node answers what
its workers finish in one reactor turn. The controller is
the real one: ``achilles_like.map(abs, range(T), chunksize=1, host=...)`` from
the main thread. The server's CPU comes from ``/proc/<pid>/stat`` (utime +
stime, 10 ms ticks) before and after each phase, its memory from ``VmRSS``.

Per N it prints: server CPU per task and tasks/s for ``--tasks`` tasks,
server memory per connected node (VmRSS delta / N), the time for N nodes
connecting at once to all be registered, server CPU per second with N idle
nodes (over ``--idle`` seconds: a whole number of the server's 10 s idle
heartbeat interval, so every idle node's PING and PONG are counted as often
as they happen), and the peak number of tasks held by the
simulated nodes at once during a ``map`` of ``--waves`` × 4N tasks of
``--hold`` seconds (the busy processes; a node is never sent more than its
4). The issue 9 targets are checked at the end. Linux only; nothing is
asserted; everything is on 127.0.0.1; a full run takes about three minutes.

All simulated nodes come from 127.0.0.1, so the server's flood caps on
unauthenticated connections (in all, and per address) are raised to let
them connect as one storm; real nodes come from as many addresses.
"""

from __future__ import annotations

import argparse
import heapq
import os
import pickle
import resource
import secrets
import selectors
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import _measure

import achilles_like
from achilles_like import LocalCluster
from achilles_like.protocol import ClientHandshake, FrameDecoder, encode_frame
from achilles_like.protocol import messages as msg

#: Processes (slots) per simulated node.
SLOTS = 4
#: Clock ticks per second of utime/stime in /proc/<pid>/stat.
_TICKS = os.sysconf("SC_CLK_TCK")
#: Give up on a storm that has not registered by then (the target is 30 s).
REGISTER_DEADLINE = 60.0


def user_and_system(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds so far (``_measure.cpu_seconds`` is their sum)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


@dataclass(eq=False)
class SimNode:
    """One simulated node on a non-blocking socket; the :class:`Swarm` drives it."""

    sock: socket.socket
    handshake: ClientHandshake
    decoder: FrameDecoder = field(default_factory=FrameDecoder)
    out: bytearray = field(default_factory=bytearray)
    node_id: str = ""
    held: int = 0  # tasks received and not yet answered
    writing: bool = False  # waiting for the socket to take the rest of `out`
    dead: bool = False


class Swarm:
    """N simulated nodes served by one selector loop on a background thread."""

    def __init__(self, port: int, secret: bytes, count: int) -> None:
        self.port = port
        self.secret = secret
        self.count = count
        self.hold = 0.0  # seconds each task is held before its RESULT; 0 answers at once
        self.selector = selectors.DefaultSelector()
        self.nodes: list[SimNode] = []
        self.registered = 0
        self.held_now = 0
        self.held_peak = 0
        self.over_slots = 0  # tasks a node got beyond its slots (should stay 0)
        self.errors: list[str] = []
        # (due, sequence, node, job, RESULT frame) for held tasks, earliest first.
        self._due: list[tuple[float, int, SimNode, str, bytes]] = []
        self._sequence = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scale-swarm", daemon=True)

    # -- the loop ------------------------------------------------------------------

    def connect_all(self) -> None:
        """Open every node's connection in one go (nothing waits here), then start the loop."""
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect_ex(("127.0.0.1", self.port))
            node = SimNode(sock, ClientHandshake(self.secret, secrets.token_bytes(32), "node"))
            self.nodes.append(node)
            self.selector.register(sock, selectors.EVENT_READ, node)
        self._thread.start()

    def close(self) -> None:
        """Stop the loop and close every connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for node in self.nodes:
            node.sock.close()
        self.selector.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            timeout = 0.2
            if self._due:
                timeout = max(0.0, min(timeout, self._due[0][0] - time.monotonic()))
            for key, events in self.selector.select(timeout):
                node: SimNode = key.data
                if node.dead:
                    continue
                try:
                    if events & selectors.EVENT_WRITE:
                        self._flush(node)
                    if events & selectors.EVENT_READ:
                        self._readable(node)
                except OSError as error:
                    self._fail(node, f"{type(error).__name__}: {error}")
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, _, node, _, frame = heapq.heappop(self._due)
                self._answer(node, frame)

    def _fail(self, node: SimNode, why: str) -> None:
        node.dead = True
        self.errors.append(why)
        try:
            self.selector.unregister(node.sock)
        except (KeyError, ValueError):
            pass

    def _send(self, node: SimNode, data: bytes) -> None:
        node.out += data
        if not node.writing:
            self._flush(node)

    def _flush(self, node: SimNode) -> None:
        del node.out[: node.sock.send(node.out)]
        if bool(node.out) != node.writing:
            node.writing = bool(node.out)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if node.writing else 0)
            self.selector.modify(node.sock, events, node)

    def _readable(self, node: SimNode) -> None:
        data = node.sock.recv(262144)
        if not data:
            self._fail(node, "the server closed a simulated node's connection")
            return
        for frame in node.decoder.feed(data):
            if not node.handshake.authenticated:
                self._send(node, node.handshake.receive(frame))
                if node.handshake.authenticated:
                    self._send(
                        node,
                        encode_frame("REGISTER", slots=SLOTS, processes=SLOTS, name="sim", pid=1),
                    )
                continue
            verb = frame.verb
            if verb == "TASK":
                tasks = msg.decode(frame)
                assert isinstance(tasks, msg.Tasks)
                self._tasks(node, tasks)
            elif verb == "PING":
                self._send(node, encode_frame("PONG"))
            elif verb == "REGISTERED":
                node.node_id = frame.fields["node"]
                with self._lock:
                    self.registered += 1
            elif verb == "CANCEL":
                self._cancel(node, frame.fields["job"])
            elif verb == "ERROR":
                self._fail(node, f"ERROR from the server: {frame.fields}")
            # JOB, FUNC and RELEASE need no answer: a simulated node runs nothing.

    def _tasks(self, node: SimNode, tasks: msg.Tasks) -> None:
        """Answer a TASK frame's tasks: at once in one RESULT frame (as a node's turn does), or each later."""
        results = []
        for task, attempt, _, body in tasks.entries:
            items = len(pickle.loads(body))  # the server's pickle, after a mutual handshake
            results.append((task, attempt, 1, pickle.dumps([None] * items)))
        count = len(results)
        over_before = max(0, node.held - SLOTS)
        node.held += count
        self.over_slots += max(0, node.held - SLOTS) - over_before  # tasks beyond the node's slots
        self.held_now += count
        self.held_peak = max(self.held_peak, self.held_now)
        job = str(tasks.job)
        if self.hold <= 0:
            self._answer(node, b"".join(msg.Results(job=tasks.job, entries=results).encode()), count)
            return
        due = time.monotonic() + self.hold
        for entry in results:
            self._sequence += 1
            frame = b"".join(msg.Results(job=tasks.job, entries=[entry]).encode())
            heapq.heappush(self._due, (due, self._sequence, node, job, frame))

    def _answer(self, node: SimNode, result: bytes, count: int = 1) -> None:
        node.held -= count
        self.held_now -= count
        if not node.dead:
            try:
                self._send(node, result)
            except OSError as error:
                self._fail(node, f"{type(error).__name__}: {error}")

    def _cancel(self, node: SimNode, job: str) -> None:
        kept = []
        for entry in self._due:
            if entry[2] is node and entry[3] == job:
                node.held -= 1
                self.held_now -= 1
            else:
                kept.append(entry)
        heapq.heapify(kept)
        self._due = kept

    # -- from the main thread --------------------------------------------------------

    def wait_registered(self, deadline: float) -> bool:
        """Poll until every node is registered, a node failed, or the deadline passed."""
        while time.monotonic() < deadline:
            if self.registered == self.count:
                return True
            if self.errors:
                return False
            time.sleep(0.01)  # a benchmark's poll: the figure is read to 10 ms
        return False

    def reset_peak(self) -> None:
        """Start counting the peak of held tasks afresh."""
        self.held_peak = self.held_now


@dataclass
class Row:
    """One N's figures (NaN where a phase could not run)."""

    nodes: int
    cpu_per_task_us: float = float("nan")
    system_share: float = float("nan")  # of the server's CPU per task, the part spent in the kernel
    tasks_per_s: float = float("nan")
    kib_per_node: float = float("nan")
    connect_s: float = float("nan")
    registered: int = 0
    idle_ms_per_s: float = float("nan")
    busy_peak: int = 0
    busy_wall_s: float = float("nan")
    over_slots: int = 0
    errors: list[str] = field(default_factory=list)


def measure(nodes: int, tasks: int, idle: float, hold: float, waves: int, heartbeat: float) -> Row:
    """Run every phase against a fresh server with ``nodes`` simulated nodes."""
    row = Row(nodes)
    server_args: tuple[str, ...] = (
        "--max-pending",
        str(max(1024, 2 * nodes)),
        "--max-pending-per-address",
        "100000",
    )
    if heartbeat:
        server_args += ("--heartbeat-interval", str(heartbeat))
    with LocalCluster(nodes=0, server_args=server_args) as cluster:
        assert cluster.server is not None
        pid = cluster.server.pid
        target = {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}
        rss_before = _measure.status_kib(pid, "VmRSS")
        swarm = Swarm(cluster.port, cluster.secret_key.encode(), nodes)
        try:
            start = time.monotonic()
            swarm.connect_all()
            done = swarm.wait_registered(start + REGISTER_DEADLINE)
            row.connect_s = time.monotonic() - start
            row.registered = swarm.registered
            if not done:
                row.errors = swarm.errors[:3] or [f"only {swarm.registered} of {nodes} registered"]
                return row
            row.kib_per_node = (_measure.status_kib(pid, "VmRSS") - rss_before) / nodes

            # Idle: heartbeats only (the first PINGs go out within an interval of connecting).
            cpu = _measure.cpu_seconds(pid)
            time.sleep(idle)
            row.idle_ms_per_s = (_measure.cpu_seconds(pid) - cpu) * 1000 / idle

            # Throughput: answered at once; a small warm-up opens the controller's connection.
            achilles_like.map(abs, range(200), chunksize=1, **target)  # type: ignore[arg-type]
            (user, system), wall = user_and_system(pid), time.monotonic()
            achilles_like.map(abs, range(tasks), chunksize=1, **target)  # type: ignore[arg-type]
            wall = time.monotonic() - wall
            user_after, system_after = user_and_system(pid)
            cpu = user_after - user + system_after - system
            row.cpu_per_task_us = cpu / tasks * 1e6
            row.system_share = (system_after - system) / cpu if cpu else float("nan")
            row.tasks_per_s = tasks / wall

            # Long tasks: every task held for `hold` seconds; count how many are held at once.
            swarm.hold = hold
            swarm.reset_peak()
            wall = time.monotonic()
            achilles_like.map(abs, range(waves * SLOTS * nodes), chunksize=1, **target)  # type: ignore[arg-type]
            row.busy_wall_s = time.monotonic() - wall
            row.busy_peak = swarm.held_peak
            row.over_slots = swarm.over_slots
            row.errors = swarm.errors[:3]
        finally:
            swarm.close()
    return row


def _fmt(value: float, spec: str) -> str:
    return "–" if value != value else format(value, spec)


def print_table(rows: list[Row], hold: float, waves: int) -> None:
    """The figures, one line per N."""
    header = (
        f"{'nodes':>6}  {'CPU/task':>9}  {'sys':>4}  {'tasks/s':>8}  {'KiB/node':>8}  {'connect':>8}"
        f"  {'idle CPU':>9}  {'busy peak':>10}  {'long map':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.nodes:>6,}  {_fmt(r.cpu_per_task_us, '7.1f')} µs  {_fmt(100 * r.system_share, '3.0f')}%"
            f"  {_fmt(r.tasks_per_s, '8,.0f')}"
            f"  {_fmt(r.kib_per_node, '8.1f')}  {_fmt(r.connect_s, '6.2f')} s"
            f"  {_fmt(r.idle_ms_per_s, '4.1f')} ms/s  {r.busy_peak:>5,}/{SLOTS * r.nodes:<5,}"
            f"  {_fmt(r.busy_wall_s, '6.2f')} s"
        )
        if r.errors or r.over_slots:
            print(f"        problems: over-slot tasks {r.over_slots}; {r.errors}")
    print(
        f"(sys: the kernel's share of the server's CPU per task; long map: {waves} × 4N tasks"
        f" each held {hold:g} s; busy peak: tasks held at once / 4N)"
    )


def check_targets(rows: list[Row]) -> None:
    """The issue 9 targets, for the N this run measured."""
    by_n = {r.nodes: r for r in rows}
    checks: list[tuple[str, bool]] = []
    if 1000 in by_n:
        cpu = by_n[1000].cpu_per_task_us
        checks.append((f"server CPU per task at 1,000 nodes {cpu:.1f} µs ≤ 60 µs", cpu <= 60))
        if 1 in by_n:
            ratio = cpu / by_n[1].cpu_per_task_us
            checks.append((f"… and {ratio:.2f}× the figure at 1 node ≤ 1.5×", ratio <= 1.5))
        r = by_n[1000]
        checks.append(
            (
                f"1,000 nodes at once: {r.registered:,} registered in {r.connect_s:.2f} s (≤ 30 s)",
                r.registered == 1000 and r.connect_s <= 30,
            )
        )
        checks.append(
            (f"1 s tasks on 1,000 nodes: {r.busy_peak:,} busy at once ≥ 3,900", r.busy_peak >= 3900)
        )
    if 2000 in by_n:
        idle = by_n[2000].idle_ms_per_s
        checks.append((f"server CPU with 2,000 idle nodes {idle:.1f} ms/s ≤ 5 ms/s", idle <= 5))
    print("\nissue 9 targets:")
    for text, ok in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {text}")


def raise_open_files(needed: int) -> None:
    """This process holds one socket per simulated node: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        sys.exit(f"open-file limit {soft} is below the {needed} this run needs: lower --nodes")


def main() -> None:
    """Parse the options, measure every N, print the table and the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,10,100,1000,2000", help="comma-separated node counts")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks of the throughput map")
    parser.add_argument(
        "--idle", type=float, default=30.0, help="seconds the idle CPU is measured over (a multiple of 10)"
    )
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each long task is held")
    parser.add_argument("--waves", type=int, default=2, help="long tasks per slot of the cluster")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=0.0, help="the server's option (default: its own, 2 s)"
    )
    args = parser.parse_args()
    if not _measure.proc_available():
        sys.exit("scale.py reads the server's CPU and memory from Linux /proc")
    counts = [int(n.replace("_", "")) for n in args.nodes.split(",")]
    raise_open_files(max(counts) + 256)
    rows = []
    for n in counts:
        started = time.monotonic()
        rows.append(measure(n, args.tasks, args.idle, args.hold, args.waves, args.heartbeat_interval))
        print(f"[{n:,} nodes measured in {time.monotonic() - started:.0f} s]", file=sys.stderr, flush=True)
    print()
    print_table(rows, args.hold, args.waves)
    check_targets(rows)


if __name__ == "__main__":
    main()
