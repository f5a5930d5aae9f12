"""``achilles status`` text and ``--watch``: redraws until Ctrl-C, then exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from conftest import wait_until

from achilles_like import LocalCluster
from achilles_like.client.watch import format_status


def test_the_snapshot_shows_busy_processes_and_job_progress() -> None:
    """Nodes show busy processes capped at their count; a job with a known total shows done/total."""
    status = {
        "nodes": [
            {
                "node_id": "n1",
                "name": "box",
                "address": "10.0.0.2:1",
                "processes": 2,
                "busy": 4,
                "tasks_done": 7,
            }
        ],
        "job": {
            "job_id": 3,
            "label": "square",
            "tasks_done": 5,
            "tasks_total": 10,
            "rate": 2.0,
            "retries": 1,
            "failures": 0,
        },
        "queue": [{"job_id": 4}],
    }
    text = format_status(status)
    assert "box" in text and "busy=2 tasks_done=7 [##########]" in text
    assert "job: 3 square 5/10 tasks [##########..........] 2.0 tasks/s retries=1 failures=0" in text
    assert "queue: 1 waiting job(s)" in text


def test_watch_redraws_every_second_and_exits_zero_on_ctrl_c() -> None:
    """`achilles status --watch` prints the cluster again and again and ends with status 0 on SIGINT."""
    with LocalCluster(nodes=1, processes=1) as cluster:
        env = {**os.environ, "ACHILLES_SECRET_KEY": cluster.secret_key, "ACHILLES_NO_DOTENV": "1"}
        command = [sys.executable, "-m", "achilles_like", "status", "--watch"]
        command += ["--host", cluster.host, "--port", str(cluster.port)]
        watcher = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(watcher.stdout or []), daemon=True)
        reader.start()
        try:
            wait_until(lambda: sum(line.startswith("nodes: 1") for line in lines) >= 2, what="two redraws")
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(30) == 0
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
        reader.join(10)
        assert watcher.stderr is not None and "Traceback" not in watcher.stderr.read()
        assert any("(Ctrl-C to stop)" in line for line in lines)
