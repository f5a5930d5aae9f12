"""The exceptions achilles_like raises, all under one root.

::

    AchillesError
    ├── ConfigurationError        a setting is missing or malformed
    ├── ProtocolError             a peer broke the wire protocol
    │   ├── FrameTooLargeError    a header line or body is over its limit
    │   └── ProtocolViolationError  well-formed frames in an illegal order/state
    ├── AuthenticationError       the handshake failed (wrong secret, version)
    ├── ClusterConnectionError    the server could not be reached or was lost
    ├── JobFailedError            the cluster gave up on a job (no attempt left,
    │   │                         no node came, job cancelled on the server)
    │   └── BrokenWorkerError     ... as an executor reports it: also a
    │                             concurrent.futures BrokenProcessPool
    │                             (in client/executor.py: the pure core must
    │                             not import concurrent.futures' threads)
    └── TaskTimeoutError          a task ran over its time limit (also a TimeoutError)

An exception raised by the user's own function is *not* wrapped: the caller
gets that exception, of its own type, with the remote traceback attached as
its ``__cause__`` (a ``multiprocessing.pool.RemoteTraceback``), exactly as
``multiprocessing.Pool`` does.
"""

from __future__ import annotations


class AchillesError(Exception):
    """Root of every error achilles_like raises itself."""


class ConfigurationError(AchillesError, ValueError):
    """A setting is missing or malformed; the message names the setting."""


class ProtocolError(AchillesError):
    """A peer sent bytes that are not a valid achilles_like frame."""


class FrameTooLargeError(ProtocolError):
    """A header line or a body is larger than the configured limit."""


class ProtocolViolationError(ProtocolError):
    """A peer sent valid frames that are illegal in the current state."""


class AuthenticationError(AchillesError):
    """The handshake failed: wrong secret, wrong username or another version."""


class ClusterConnectionError(AchillesError, ConnectionError):
    """The server could not be reached, or the connection to it was lost."""


class JobFailedError(AchillesError):
    """The cluster gave up on a job for a reason other than the user's function."""


class TaskTimeoutError(AchillesError, TimeoutError):
    """A task ran over its job's time limit; only its worker process was stopped."""
