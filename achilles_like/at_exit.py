"""The library's one exit hook, registered when ``achilles_like`` is imported.

``atexit`` runs its functions last in, first out. Registering the library's
clean-up (pools, shared connections, the embedded cluster, the reactor
thread) lazily, when each is first used, would run it *before* every
``atexit`` function the program registered earlier, so such a function could
no longer use a ``Pool``. Registering one hook at import instead runs the
clean-up after every function registered later, as ``multiprocessing``'s own
exit hook does; inside it, clean-ups run last registered first, as atexit's
would. (Executors refuse new work once the interpreter starts to exit, as
the stdlib's do: see ``client/executor.py``.)
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("achilles_like")

_lock = threading.Lock()
_hooks: list[Callable[[], object]] = []


def register(hook: Callable[[], object]) -> None:
    """Run ``hook`` at interpreter exit, before the hooks registered earlier."""
    with _lock:
        # Finalizers that already ran (a pool closed or collected) are dropped here.
        _hooks[:] = [h for h in _hooks if getattr(h, "alive", True)]
        _hooks.append(hook)


def unregister(hook: Callable[[], object]) -> None:
    """Do not run ``hook`` at exit after all."""
    with _lock:
        if hook in _hooks:
            _hooks.remove(hook)


def run_all() -> None:
    """Run every hook, newest first; one that raises does not stop the others."""
    while True:
        with _lock:
            if not _hooks:
                return
            hook = _hooks.pop()
        try:
            hook()
        except Exception:
            log.exception("an exit hook of achilles_like raised")


atexit.register(run_all)
