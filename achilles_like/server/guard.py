"""Keeping the server up under a flood of connections: process limits.

A server that runs out of file descriptors refuses everyone, the
legitimate controller included. With the usual soft limit of 1,024 open
files, about a thousand stalled connections were enough, so the server
raises its soft limit to the hard limit at start (:func:`raise_open_file_limit`).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("achilles_like.server")


def raise_open_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d: %s", soft, error)
    return soft
