"""The original achilles controller API: ``map``, ``imap``, ``imap_unordered``,
``killCluster`` and ``getClusterStatus``.

Which cluster a call reaches is decided in ``target.py``. Arguments are
checked (callable, picklable, iterable, ``chunksize``) before anything is
sent, and before any cluster is started. Each call is one job on the
process-wide connection to its cluster (``shared.py``), driven from the
caller's own thread by a :class:`JobDriver`: the input is pulled lazily as
the server grants credit, results are reordered for ``map``/``imap``, and
the job stops at its first failing item, which is raised at once. Leaving
early for any reason (an exception, Ctrl-C, an abandoned ``imap`` generator)
cancels the job on the cluster.
"""

from __future__ import annotations

import builtins
import json
import queue
import sys
from collections.abc import Callable, Iterator
from typing import Any

from achilles_like.client.calls import (
    DEFAULT_MAX_AHEAD,
    check_chunksize,
    check_timeout,
    label_of,
    module_blobs,
    pickle_setup,
    prepare_input,
)
from achilles_like.client.connection import Connection
from achilles_like.client.driver import JobDriver, worth_feeding
from achilles_like.client.progress import Progress, input_length, open_progress
from achilles_like.client.results import IMapIterator
from achilles_like.client.shared import shared_connection
from achilles_like.client.sources import IterSource
from achilles_like.client.target import admin_settings, resolve_settings
from achilles_like.errors import JobFailedError
from achilles_like.protocol import messages as msg


def _run(
    func: Callable[..., Any],
    args: Any,
    callback: Callable[..., Any] | None,
    chunksize: int,
    ordered: bool,
    target: dict[str, Any],
    timeout: float | None = None,
    progress: Progress = None,
) -> Iterator[Any]:
    chunksize = check_chunksize(chunksize)
    check_timeout(timeout)
    total = input_length(args)
    items = prepare_input(args)
    func_blob = module_blobs.blob(func, callback)  # pickled again unless sent by name
    connection = shared_connection(resolve_settings(**target))
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    driver = JobDriver(
        connection,
        inbox,
        label=label_of(func),
        setup_blob=pickle_setup(),
        stop_on_failure=True,
        timeout=timeout,
    )
    results = IMapIterator(ordered, progress=open_progress(progress, total, label_of(func)))
    results.stop_at_failure = True
    source = IterSource(func_blob, items, chunksize, results, DEFAULT_MAX_AHEAD)
    return _drive(driver, source, results)


def _drive(driver: JobDriver, source: IterSource, results: IMapIterator) -> Iterator[Any]:
    """Run the job from the caller's thread, yielding each result as it becomes ready.

    Nothing is sent, and no input pulled, before the first result is asked
    for. Each step sends what it has in one write (the SUBMIT goes with the
    first tasks and, for a short input, the END), and handles every event
    that arrived together before it feeds again.
    """
    try:
        while True:
            for chunk in results.take_ready():
                if chunk.ok:
                    yield from chunk.items
                    continue
                for ok, value in chunk.items:
                    if not ok:
                        raise value
                    yield value
            if results.finished:
                return
            if driver.ended is not None:  # ended with nothing left to hand out: say why
                raise JobFailedError(driver.ended_message())
            with driver.one_write():
                if not driver.submitted:
                    driver.submit()  # inside the try: an interrupt here must still cancel the job
                _feed(driver, source)
            for event in driver.next_events():
                driver.handle(event)
    finally:
        if driver.ended is None:
            driver.cancel()
        else:
            driver.release()


def _feed(driver: JobDriver, source: IterSource) -> None:
    """Send what the credit allows, gathered as a Pool's session does; END once the input is all sent."""
    if worth_feeding(driver):
        driver.feed([source])
    if source.exhausted and not driver.end_sent:
        driver.end()


def map(  # noqa: A001 - the achilles / multiprocessing name
    func: Callable[[Any], Any],
    args: Any,
    callback: Callable[[Any], Any] | None = None,
    chunksize: int = 1,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    timeout: float | None = None,
    progress: Progress = None,
) -> list[Any]:
    """Apply ``func`` to every item of ``args`` on the cluster; return the results in order.

    ``callback``, when given, is applied on the node to each result before it
    is returned (achilles' meaning). ``chunksize`` items travel together.
    ``timeout`` limits each task (chunk) to that many seconds: a task over it
    has only its worker process stopped and raises :class:`TaskTimeoutError`.
    ``progress=True`` shows a tqdm bar on stderr (a widget in Jupyter); a
    ``tqdm`` bar of your own may be passed instead.
    """
    target = {"host": host, "port": port, "username": username, "secret_key": secret_key}
    return builtins.list(_run(func, args, callback, chunksize, True, target, timeout, progress))


def imap(
    func: Callable[[Any], Any],
    args: Any,
    callback: Callable[[Any], Any] | None = None,
    chunksize: int = 1,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    timeout: float | None = None,
    progress: Progress = None,
) -> Iterator[Any]:
    """Like :func:`map`, but lazy: yield results in input order as they become ready."""
    target = {"host": host, "port": port, "username": username, "secret_key": secret_key}
    return _run(func, args, callback, chunksize, True, target, timeout, progress)


def imap_unordered(
    func: Callable[[Any], Any],
    args: Any,
    callback: Callable[[Any], Any] | None = None,
    chunksize: int = 1,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    timeout: float | None = None,
    progress: Progress = None,
) -> Iterator[Any]:
    """Like :func:`imap`, but yield results as soon as they complete, in any order."""
    target = {"host": host, "port": port, "username": username, "secret_key": secret_key}
    return _run(func, args, callback, chunksize, False, target, timeout, progress)


def getClusterStatus(  # noqa: N802 - achilles' public name style
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
) -> dict[str, Any]:
    """Return the server's view: ``nodes``, the running ``job`` and the ``queue``."""
    settings = admin_settings(host, port, username, secret_key)
    with Connection.open(settings, role="admin") as connection:
        reply = connection.request(msg.Status(), msg.Status)
    status: dict[str, Any] = json.loads(reply.body)
    return status


def killCluster(  # noqa: N802 - achilles' public name
    command_verified: bool = False,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    stop_server: bool = False,
) -> int:
    """Stop every node of the cluster (and the server too with ``stop_server``).

    Asks for confirmation on the terminal unless ``command_verified`` is true.
    Returns how many nodes were told to stop (0 when the user declined).
    """
    settings = admin_settings(host, port, username, secret_key)
    if not command_verified:
        where = f"{settings.host}:{settings.port}"
        if not sys.stdin or not sys.stdin.isatty():
            raise RuntimeError("killCluster needs command_verified=True when no terminal is attached")
        answer = input(f"Stop every node of the cluster at {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    with Connection.open(settings, role="admin") as connection:
        reply = connection.request(msg.Kill(server=stop_server), msg.Killed)
    return reply.nodes
