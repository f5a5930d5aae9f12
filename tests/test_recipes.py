"""The recipes in examples/: SLURM and PBS scripts run end to end through stand-in shims on 127.0.0.1,
the systemd units are verified, and the compose file has one server and N nodes.

The shims (``srun``, ``scontrol``, ``pbsdsh``) run their commands on this machine, one per
"allocated host", so everything the batch scripts do really happens: start a server on port 0,
read its port, start the nodes, wait for them, run the user's script, tear everything down.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

USER_SCRIPT = """\
from achilles_like import getClusterStatus, map

nodes = getClusterStatus()["nodes"]
print("nodes", len(nodes))
print("squares", sum(map(abs, range(-50, 50), chunksize=5)))
"""

SHIMS = {
    # scontrol show hostnames LIST: one loopback name per allocated node.
    "scontrol": """\
        #!/usr/bin/env bash
        [ "$1 $2" = "show hostnames" ] || { echo "scontrol shim: unsupported $*" >&2; exit 2; }
        for _ in $(seq "$SLURM_JOB_NUM_NODES"); do echo 127.0.0.1; done
        """,
    # srun [options] COMMAND: COMMAND once per allocated node, here, concurrently.
    "srun": """\
        #!/usr/bin/env bash
        while [ "${1#-}" != "$1" ]; do shift; done
        pids=()
        for _ in $(seq "$SLURM_JOB_NUM_NODES"); do "$@" & pids+=($!); done
        trap 'kill "${pids[@]}" 2>/dev/null' TERM INT
        wait
        """,
    # pbsdsh -u COMMAND: COMMAND once per unique host of $PBS_NODEFILE, with an empty environment.
    "pbsdsh": """\
        #!/usr/bin/env bash
        [ "$1" = "-u" ] && shift
        pids=()
        for _ in $(sort -u "$PBS_NODEFILE"); do env -i PATH="$PATH" "$@" & pids+=($!); done
        trap 'kill "${pids[@]}" 2>/dev/null' TERM INT
        wait
        """,
}


def shim_path(tmp_path: Path) -> str:
    """A PATH with the stand-in batch-system commands first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in SHIMS.items():
        shim = bin_dir / name
        shim.write_text(textwrap.dedent(text))
        shim.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def run_batch(script: Path, tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """Run a batch script in its own process group; kill the group if it overruns; return its output."""
    (tmp_path / "user_job.py").write_text(USER_SCRIPT)
    base = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    base.update(PATH=shim_path(tmp_path), PYTHON=sys.executable, ACHILLES_PROCESSES="1")
    base["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    process = subprocess.Popen(
        ["bash", str(script), *args],
        cwd=tmp_path,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything the script left behind
        except ProcessLookupError:
            pass
    assert process.returncode == 0, output
    return output


def test_the_slurm_script_runs_a_job_on_every_allocated_node(tmp_path: Path) -> None:
    """sbatch's script starts a server and one node per allocated node, runs the command, stops them."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2", "TMPDIR": str(scratch)}
    output = run_batch(EXAMPLES / "slurm" / "achilles.sbatch", tmp_path, env, sys.executable, "user_job.py")
    assert "nodes 2" in output and "squares 2500" in output
    assert not list(scratch.iterdir()), "the script left its working directory behind"


def test_the_pbs_script_runs_a_job_on_every_allocated_host(tmp_path: Path) -> None:
    """The PBS script starts a node per unique host with pbsdsh (no environment), runs the command."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("127.0.0.1\n127.0.0.1\nlocalhost\nlocalhost\n")
    env = {"PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(tmp_path)}
    output = run_batch(EXAMPLES / "pbs" / "achilles.pbs", tmp_path, env, sys.executable, "user_job.py")
    assert "nodes 2" in output and "squares 2500" in output
    assert not list(tmp_path.glob(".achilles-pbs.*")), "the secret's directory was left behind"


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (not a systemd system)")
@pytest.mark.parametrize(
    ("unit", "as_name"),
    [("achilles-server.service", None), ("achilles-node@.service", "achilles-node@127.0.0.1.service")],
)
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str, as_name: str | None) -> None:
    """Each unit verifies cleanly (the template as an instance), restarts on failure, reads a secret file."""
    text = (EXAMPLES / "systemd" / unit).read_text()
    assert "Restart=on-failure" in text and "LoadCredential=achilles-secret:/etc/achilles/secret" in text
    assert "SECRET_KEY=" not in text.replace('ACHILLES_SECRET_KEY="$(cat', "")  # no secret in the unit
    path = tmp_path / (as_name or unit)
    path.write_text(text)
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_compose_file_has_one_server_and_nodes_sharing_a_secret_file() -> None:
    """compose.yaml: one server publishing on loopback, scalable nodes pointed at it, the secret as a file."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is in the test extra")
    compose = yaml.safe_load((EXAMPLES / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"server", "node"}
    server, node = services["server"], services["node"]
    assert server["build"]["dockerfile"] == "examples/docker/Dockerfile"
    assert (EXAMPLES.parent / server["build"]["dockerfile"]).is_file()
    assert all(port.startswith("127.0.0.1:") for port in server["ports"])
    assert node["environment"]["ACHILLES_HOST"] == "server" and node["depends_on"] == ["server"]
    assert node["environment"]["ACHILLES_PORT"] == server["environment"]["ACHILLES_PORT"]
    assert node["deploy"]["replicas"] >= 1 and node["image"] == server["image"]
    for service in (server, node):
        assert (
            service["secrets"] == ["achilles_secret"]
            and "/run/secrets/achilles_secret" in service["entrypoint"][-1]
        )
        assert not any("SECRET" in key for key in service["environment"])
    assert compose["secrets"]["achilles_secret"] == {"file": "./secret"}


def test_the_dockerfile_installs_the_package_and_runs_unprivileged() -> None:
    """The Dockerfile installs this package and drops root before running ``achilles``."""
    lines = (EXAMPLES / "docker" / "Dockerfile").read_text().splitlines()
    assert any(line.startswith("FROM python:3.11") for line in lines)
    assert "RUN pip install --no-cache-dir . && rm -rf /src" in lines
    assert "USER achilles" in lines and lines.index("USER achilles") < lines.index('ENTRYPOINT ["achilles"]')
