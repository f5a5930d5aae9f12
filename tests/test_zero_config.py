"""With nothing configured, it still works: user scripts run as real processes.

Each script runs with a clean environment (every ``ACHILLES_*`` variable
removed) in ``tmp_path``, which has no ``.env``, so the only cluster a script
can reach is the embedded one it starts itself. Scripts print one JSON line
as their last output line; the subprocess timeout doubles as the "no hang at
exit" check.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

from conftest import run_python_script

TIMEOUT = 180.0  # seconds: a script starts (and stops) a local cluster of its own


def run_script(
    tmp_path: Path, source: str, name: str = "script.py"
) -> tuple[Any, subprocess.CompletedProcess[str]]:
    """Write ``source`` as a script in ``tmp_path``, run it there; return its JSON output and the process."""
    assert not (tmp_path / ".env").exists()
    started = time.monotonic()
    result = run_python_script(tmp_path, source, timeout=TIMEOUT, name=name)
    assert time.monotonic() - started < TIMEOUT
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines, f"{name} printed nothing; stderr: {result.stderr}"
    return json.loads(lines[-1]), result


def refuses_connections(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def test_main_module_functions_lambdas_and_closures(tmp_path: Path) -> None:
    """map with no host runs __main__ functions, a constant, math, a lambda and a closure, then exits."""
    output, _ = run_script(
        tmp_path,
        """
        import json
        import math

        import achilles_like

        OFFSET = 1000


        def helper(x):
            return 3 * x


        def compute(x):
            return helper(x) + OFFSET + math.isqrt(x)


        def make_scaler(factor):
            def scale(x):
                return factor * x + OFFSET

            return scale


        if __name__ == "__main__":
            results = {
                "function": achilles_like.map(compute, range(20)),
                "lambda": achilles_like.map(lambda x: (x, x**2), range(6)),
                "closure": achilles_like.map(make_scaler(7), [1, 2, 3]),
                "imap": list(achilles_like.imap(compute, range(5), chunksize=2)),
                "unordered": sorted(achilles_like.imap_unordered(lambda x: -x, range(8), chunksize=3)),
            }
            print(json.dumps(results))
        """,
    )
    assert output == {
        "function": [3 * x + 1000 + math.isqrt(x) for x in range(20)],
        "lambda": [[x, x**2] for x in range(6)],
        "closure": [1007, 1014, 1021],
        "imap": [3 * x + 1000 + math.isqrt(x) for x in range(5)],
        "unordered": [-x for x in reversed(range(8))],
    }


def test_embedded_cluster_is_reused_and_stopped_at_exit(tmp_path: Path) -> None:
    """Two calls share one embedded cluster (same port, same object); after exit its port is closed."""
    output, _ = run_script(
        tmp_path,
        """
        import json

        import achilles_like
        import achilles_like.local


        def square(x):
            return x * x


        if __name__ == "__main__":
            first = achilles_like.map(square, range(5))
            port_after_first = achilles_like.local.default_cluster().port
            cluster_after_first = id(achilles_like.local._default)
            second = achilles_like.map(square, range(5, 10))
            port_after_second = achilles_like.local.default_cluster().port
            same_object = id(achilles_like.local._default) == cluster_after_first
            print(json.dumps({
                "results": first + second,
                "ports": [port_after_first, port_after_second],
                "same_object": same_object,
                "nodes": len(achilles_like.getClusterStatus()["nodes"]),
            }))
        """,
    )
    assert output["results"] == [x * x for x in range(10)]
    first_port, second_port = output["ports"]
    assert first_port == second_port
    assert first_port > 0
    assert output["same_object"] is True
    assert output["nodes"] == 1
    assert refuses_connections(first_port)


def test_local_cluster_block_is_the_default_target(tmp_path: Path) -> None:
    """Inside `with LocalCluster(nodes=1, processes=2)` module functions use it; the default never starts."""
    output, _ = run_script(
        tmp_path,
        """
        import json

        import achilles_like
        import achilles_like.local
        from achilles_like import LocalCluster, getClusterStatus


        def cube(x):
            return x ** 3


        if __name__ == "__main__":
            with LocalCluster(nodes=1, processes=2) as cluster:
                results = achilles_like.map(cube, range(12), chunksize=5)
                status = getClusterStatus()
                default_untouched = achilles_like.local._default is None
                port = cluster.port
            print(json.dumps({
                "results": results,
                "default_untouched": default_untouched,
                "default_after_block": achilles_like.local._default is None,
                "nodes": [node["processes"] for node in status["nodes"]],
                "tasks_done": sum(node["tasks_done"] for node in status["nodes"]),
                "port": port,
            }))
        """,
    )
    assert output["results"] == [x**3 for x in range(12)]
    assert output["default_untouched"] is True
    assert output["default_after_block"] is True
    assert output["nodes"] == [2]
    assert output["tasks_done"] == 3  # 12 items in tasks of 5: 5 + 5 + 2
    assert refuses_connections(output["port"])


def test_functions_from_the_users_own_module(tmp_path: Path) -> None:
    """A function from the user's module next to the script runs on local nodes (they get sys.path)."""
    (tmp_path / "mymod.py").write_text(
        textwrap.dedent(
            """
            import os

            SUFFIX = "!"


            class Box:
                def __init__(self, value):
                    self.value = value


            def shout(word):
                return word.upper() + SUFFIX


            def unbox(box):
                return (box.value, os.getpid())
            """
        ),
        encoding="utf-8",
    )
    output, _ = run_script(
        tmp_path,
        """
        import json
        import os

        import achilles_like
        import mymod

        if __name__ == "__main__":
            words = achilles_like.map(mymod.shout, ["a", "bc", "def"])
            boxed = achilles_like.map(mymod.unbox, [mymod.Box(i) for i in range(4)])
            print(json.dumps({
                "words": words,
                "values": [value for value, _ in boxed],
                "ran_elsewhere": all(pid != os.getpid() for _, pid in boxed),
                "module_file": mymod.__file__,
            }))
        """,
    )
    assert output["words"] == ["A!", "BC!", "DEF!"]
    assert output["values"] == [0, 1, 2, 3]
    assert output["ran_elsewhere"] is True
    assert Path(output["module_file"]).resolve().parent == tmp_path.resolve()


def test_script_exits_promptly_after_its_work(tmp_path: Path) -> None:
    """A zero-config script exits within 3 seconds of its last line of output (the cluster stops quickly)."""
    output, _ = run_script(
        tmp_path,
        """
        import json
        import time

        import achilles_like


        def square(x):
            return x * x


        if __name__ == "__main__":
            results = achilles_like.map(square, range(5))
            print(json.dumps({"results": results, "printed_at": time.time()}), flush=True)
        """,
    )
    exited_at = time.time()
    assert output["results"] == [0, 1, 4, 9, 16]
    assert exited_at - output["printed_at"] < 3.0
