"""A script's own ``__main__`` code in a Pool: initializer globals are visible to the tasks.

Functions defined in ``__main__`` travel by value (dill). Each gets a private
globals dict from dill, so without care a ``global`` set by the initializer
would be invisible to the task: the Ray and loky pools break this way. The
worker makes a pool's by-value functions share one globals dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, math, os
    from achilles_like import Pool, ProcessPoolExecutor

    OFFSET = 100
    state = None

    def setup(value):
        global state
        state = value

    def helper(x):
        return int(math.sqrt(x)) + OFFSET

    def task(x):
        return (state, helper(x * x), os.getpid())

    if __name__ == "__main__":
        with Pool(2, initializer=setup, initargs=("ready",)) as pool:
            first = pool.map(task, range(6))
            second = pool.map(task, range(6))  # a later job of the same pool
        with ProcessPoolExecutor(2, initializer=setup, initargs=("executor",)) as executor:
            third = [executor.submit(task, x).result() for x in range(3)]
        print(json.dumps({"first": first, "second": second, "third": third}))
    """
)


def test_main_module_initializer_globals_reach_tasks(tmp_path: Path) -> None:
    """A __main__ initializer's global is seen by __main__ tasks, in every job of the pool and executor."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("first", "second"):
        assert [[state, value] for state, value, _ in out[key]] == [["ready", x + 100] for x in range(6)]
    assert [[state, value] for state, value, _ in out["third"]] == [["executor", x + 100] for x in range(3)]
    worker_pids = {pid for key in out for _, _, pid in out[key]}
    assert os.getpid() not in worker_pids  # it ran in the cluster's workers
