"""Progress bars on the caller's side: ``progress=`` of the map functions, as a tqdm bar.

The facades call :func:`open_progress` once per call and feed the sink the
number of items that came back; the bar is ``tqdm.auto`` so it draws on
stderr in a terminal and as a widget in Jupyter. ``progress=True`` makes a
bar (closed when the call ends); a ``tqdm`` instance the caller made is used
as it is and left open, because it is theirs (a bar shared by several calls
keeps counting). The total is known only when the input has a length.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from tqdm.auto import tqdm
from tqdm.std import tqdm as base_tqdm

#: What ``progress=`` accepts: off (None/False), a new bar (True), or the caller's own tqdm bar.
Progress = bool | base_tqdm | None


class ProgressSink(Protocol):
    """Where a call reports the items it has finished."""

    def update(self, n: int = 1) -> Any:
        """``n`` more items are done."""

    def close(self) -> None:
        """The call has ended (successfully or not)."""


class _Borrowed:
    """A caller's own bar: counted on, refreshed, never closed by us."""

    def __init__(self, bar: base_tqdm) -> None:
        self.bar = bar

    def update(self, n: int = 1) -> Any:
        return self.bar.update(n)

    def close(self) -> None:
        self.bar.refresh()


def input_length(iterable: Iterable[Any]) -> int | None:
    """The number of items when the input knows it without being consumed, else None."""
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def open_progress(progress: bool | base_tqdm | None, total: int | None, desc: str) -> ProgressSink | None:
    """A sink for ``progress=``: None when off, a new ``tqdm.auto`` bar for True, or the caller's bar."""
    if progress is None or progress is False:
        return None
    if progress is True:
        sink: ProgressSink = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True)
        return sink
    if isinstance(progress, base_tqdm):
        if progress.total is None and total is not None:
            progress.total = total
            progress.refresh()
        return _Borrowed(progress)
    raise TypeError(
        f"progress= must be True, False, None or a tqdm progress bar, not {type(progress).__name__};"
        " pass progress=True for a bar on stderr"
    )
