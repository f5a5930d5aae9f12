"""A fault-injecting TCP proxy for tests, written with Twisted.

::

    python tests/faultproxy.py --target-port P [--chunk N] [--latency MS]
                               [--cut-after N [--cut-connections K]] [--stop-on-stdin-eof]

It listens on 127.0.0.1, port 0, prints one ready line
``faultproxy listening on 127.0.0.1:PORT`` and forwards bytes both ways
between every client it accepts and 127.0.0.1:P, with these faults:

- ``--chunk N``: deliver at most N bytes per write, and write the next chunk
  only once the previous one has left Twisted's buffer: one ``send`` and one
  TCP segment each (TCP_NODELAY), so the peer reads the stream in pieces of
  about N bytes (a few coalesce when the reader lags behind).
- ``--latency MS``: deliver everything MS milliseconds after it arrived, in
  both directions, order preserved.
- ``--cut-after N``: once N bytes have passed upstream (client to target) on a
  connection, forward exactly those N bytes, then reset both sides
  (``abortConnection``, so a RST, not a clean close). Only the first K
  accepted connections are cut with ``--cut-connections K`` (default: all).
  A cut inside a frame is a reset mid-frame.

Each cut prints ``faultproxy reset connection I after N upstream bytes``. A
clean close on one side closes both, once what that side sent is delivered.
With ``--stop-on-stdin-eof`` the proxy exits when its stdin closes, so a test
that dies leaves no proxy behind.

Every direction of a connection is a :class:`Pipe`: a pull producer
registered on the transport it writes to. Twisted calls its
``resumeProducing`` each time that transport's write buffer is empty, which
paces chunks and tells when the bytes before a reset have really been handed
to the kernel (``abortConnection`` alone would drop them).

:class:`ProxyFactory` also runs in-process, on any reactor, for tests that
change ``cut_after`` between connections.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

CLOSE = "close"  # pipe markers: close cleanly, or reset, once everything before them is delivered
RESET = "reset"


@implementer(IPullProducer)
class Pipe:
    """One direction of one connection: bytes in order, ``chunk`` at a time, ``latency`` late."""

    def __init__(self, link: Link, transport: Any) -> None:
        self.link = link
        self.transport = transport
        self.queue: deque[tuple[float, bytes | str]] = deque()
        self.idle = False  # the transport's write buffer is empty
        self.timer: Any = None
        transport.registerProducer(self, False)  # calls resumeProducing at once

    def push(self, item: bytes | str) -> None:
        """Queue bytes (or a CLOSE/RESET marker) for delivery."""
        self.queue.append((self.link.clock.seconds() + self.link.factory.latency, item))
        self._deliver()

    def resumeProducing(self) -> None:
        self.idle = True
        self._deliver()

    def stopProducing(self) -> None:
        self.queue.clear()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()

    def _due(self) -> None:
        self.timer = None
        self._deliver()

    def _deliver(self) -> None:
        if not self.idle or not self.queue or self.timer is not None:
            return
        now = self.link.clock.seconds()
        due, item = self.queue[0]
        if due > now:
            self.timer = self.link.clock.callLater(due - now, self._due)
            return
        if isinstance(item, str):  # a marker: every byte before it has left our buffer
            self.queue.clear()
            if item == CLOSE:
                self.link.close()
            else:
                self.link.reset()
            return
        limit = self.link.factory.chunk or sys.maxsize
        parts: list[bytes] = []
        size = 0
        while self.queue and size < limit:  # every byte that is due, up to one chunk
            due, item = self.queue[0]
            if due > now or isinstance(item, str):
                break
            take = item[: limit - size]
            if len(take) < len(item):
                self.queue[0] = (due, item[len(take) :])
            else:
                self.queue.popleft()
            parts.append(take)
            size += len(take)
        self.idle = False
        self.transport.write(b"".join(parts))


class Target(Protocol):
    """The proxy's connection to the target server."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def dataReceived(self, data: bytes) -> None:
        self.link.downstream_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.link.side_lost(self, reason)


class Link(Protocol):
    """One accepted client connection and its partner connection to the target."""

    def __init__(self, factory: ProxyFactory) -> None:
        self.factory = factory
        self.clock = factory.clock
        self.index = 0
        self.target: Target | None = None
        self.up: Pipe | None = None  # client -> target
        self.down: Pipe | None = None  # target -> client
        self.passed = 0  # bytes accepted for upstream delivery
        self.cut_at: int | None = None
        self.finished = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.factory.accepted += 1
        self.index = self.factory.accepted
        cuts = self.factory.cut_connections
        if self.factory.cut_after is not None and (cuts is None or self.index <= cuts):
            self.cut_at = self.factory.cut_after
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.transport.pauseProducing()  # type: ignore[attr-defined] # read nothing until linked
        endpoint = TCP4ClientEndpoint(self.clock, "127.0.0.1", self.factory.target_port)
        connecting = connectProtocol(endpoint, Target(self))  # type: ignore[no-untyped-call]
        connecting.addCallbacks(self._linked, lambda _: self.reset(announce=False))

    def _linked(self, target: Target) -> None:
        assert self.transport is not None and target.transport is not None
        if self.finished:
            target.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.target = target
        target.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.up = Pipe(self, target.transport)
        self.down = Pipe(self, self.transport)
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.up is None or self.finished or (self.cut_at is not None and self.passed >= self.cut_at):
            return
        cutting = self.cut_at is not None and self.passed + len(data) >= self.cut_at
        if cutting:
            assert self.cut_at is not None
            data = data[: self.cut_at - self.passed]
        self.passed += len(data)
        if data:
            self.up.push(data)
        if cutting:
            self.up.push(RESET)

    def downstream_data(self, data: bytes) -> None:
        """Bytes from the target, on their way to the client."""
        if self.down is not None and not self.finished:
            self.down.push(data)

    def side_lost(self, side: Protocol, reason: Failure) -> None:
        """One side is gone: pass a clean close on cleanly, a reset as a reset."""
        if self.finished:
            return
        pipe = self.down if side is self.target else self.up
        if pipe is None or not reason.check(ConnectionDone):  # type: ignore[no-untyped-call]
            self.reset(announce=False)
        else:
            pipe.push(CLOSE)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.side_lost(self, reason)

    def close(self) -> None:
        """Close both sides cleanly (one side closed and everything it sent is delivered)."""
        self.finished = True
        for transport in self._transports():
            transport.unregisterProducer()
            transport.loseConnection()

    def reset(self, announce: bool = True) -> None:
        """Abort both sides at once: the peers see a connection reset."""
        if announce and not self.finished:
            line = f"faultproxy reset connection {self.index} after {self.passed} upstream bytes"
            self.factory.report(line)
        self.finished = True
        for transport in self._transports():
            transport.abortConnection()

    def _transports(self) -> list[Any]:
        sides = [self.transport, self.target.transport if self.target is not None else None]
        return [transport for transport in sides if transport is not None]


class ProxyFactory(Factory):
    """Settings shared by every connection; ``cut_after`` may change between connections."""

    def __init__(
        self,
        clock: Any,
        target_port: int,
        *,
        chunk: int = 0,
        latency: float = 0.0,
        cut_after: int | None = None,
        cut_connections: int | None = None,
        report: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.clock = clock
        self.target_port = target_port
        self.chunk = chunk
        self.latency = latency
        self.cut_after = cut_after
        self.cut_connections = cut_connections
        self.report = report
        self.accepted = 0
        self.links: list[Link] = []  # every connection, in accept order (for in-process tests)

    def buildProtocol(self, addr: Any) -> Link:
        link = Link(self)
        self.links.append(link)
        return link


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target-port", type=int, required=True, help="forward to 127.0.0.1:PORT")
    parser.add_argument("--chunk", type=int, default=0, help="deliver at most N bytes per write")
    parser.add_argument("--latency", type=float, default=0.0, help="delay every delivery by MS milliseconds")
    parser.add_argument("--cut-after", type=int, help="reset a connection after N upstream bytes")
    parser.add_argument("--cut-connections", type=int, help="cut only the first K connections")
    parser.add_argument("--stop-on-stdin-eof", action="store_true", help="exit when stdin closes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the proxy until interrupted (or until stdin closes, if asked)."""
    from twisted.internet import reactor

    args = _parse(argv)
    if args.cut_after is not None and args.cut_after < 1:
        raise SystemExit("faultproxy: --cut-after must be at least 1")
    factory = ProxyFactory(
        reactor,
        args.target_port,
        chunk=args.chunk,
        latency=args.latency / 1000.0,
        cut_after=args.cut_after,
        cut_connections=args.cut_connections,
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"faultproxy listening on 127.0.0.1:{port.getHost().port}", flush=True)
    if args.stop_on_stdin_eof:

        def watch() -> None:
            while os.read(sys.stdin.fileno(), 65536):
                pass
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

        threading.Thread(target=watch, daemon=True).start()
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
