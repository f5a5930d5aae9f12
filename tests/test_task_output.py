"""What tasks print reaches the caller: the bounded capture, and end to end for every API."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import tasks
from conftest import target

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.task_output import Capture, captured, replay


def test_a_capture_keeps_order_and_streams_and_drops_past_its_limit() -> None:
    """Writes keep their order per stream; past the limit the rest is counted, not kept."""
    capture = Capture(limit=10)
    capture.write(1, "abc")
    capture.write(1, "de")
    capture.write(2, "XY")
    capture.write(1, "fghij")
    assert json.loads(capture.encode()) == {"out": [[1, "abcde"], [2, "XY"], [1, "fgh"]], "dropped": 2}
    assert Capture().encode() == b""


def test_captured_replaces_and_restores_the_standard_streams() -> None:
    """Inside captured() print goes to the capture; after it, to the real streams again."""
    with captured() as capture:
        print("inside")
    assert json.loads(capture.encode())["out"] == [[1, "inside\n"]]


def test_replay_writes_each_stream_and_says_what_was_dropped() -> None:
    """A capture is written back to stdout and stderr, with a note when some was dropped."""
    out, err = io.StringIO(), io.StringIO()
    replay(json.dumps({"out": [[1, "a\n"], [2, "b\n"]], "dropped": 5}).encode(), out, err)
    assert out.getvalue() == "a\n"
    assert err.getvalue().startswith("b\n") and "5 more characters" in err.getvalue()
    replay(b"not json", out, err)  # garbage is ignored


@pytest.fixture(scope="module")
def output_cluster() -> Iterator[LocalCluster]:
    """One node of two processes."""
    with LocalCluster(nodes=1, processes=2) as running:
        yield running


def test_print_in_a_task_reaches_the_callers_stdout(
    output_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """print() and stderr writes in tasks appear on the caller's streams: map, Pool, executor."""
    t = target(output_cluster)
    assert al.map(tasks.shout, [1, 2], **t) == [1, 2]
    with al.Pool(**t) as pool:
        assert pool.apply(tasks.shout, (3,)) == 3
    with al.ProcessPoolExecutor(**t) as executor:
        assert executor.submit(tasks.shout, 4).result(60) == 4
    seen = capsys.readouterr()
    for n in (1, 2, 3, 4):
        assert f"out {n}\n" in seen.out
        assert f"err {n}\n" in seen.err


def test_forwarding_can_be_turned_off(
    output_cluster: LocalCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ACHILLES_FORWARD_OUTPUT=0 in the caller, nothing a task prints reaches it."""
    monkeypatch.setenv("ACHILLES_FORWARD_OUTPUT", "0")
    assert al.map(tasks.shout, [5], **target(output_cluster)) == [5]
    assert "out 5" not in capsys.readouterr().out
