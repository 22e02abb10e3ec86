"""Connections: uvicorn's h11 protocol with the deadlines it lacks, and an accept loop
that bounds open connections and survives running out of file descriptors."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import resource
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from server.http.guard import DATA_POLICY
from server.http.logs import RESOURCE_LOG_SECONDS, ThrottledLog
from server.http.options import FrontOptions

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

# ---------------------------------------------------------------- connections

# A request's line and headers together; more is refused (h11's default, said here).
MAX_HEAD_BYTES = 16 * 1024

# accept() errors that mean "no descriptor or buffer for a new connection now".
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors about one connection that went away before it was taken.
GONE_BEFORE_ACCEPT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
# How long the accept loop waits before trying again when it has no descriptor to use.
ACCEPT_RETRY_SECONDS = 0.25


class IdleConnections:
    """The connections waiting for a request, oldest first: the first to go when the front
    needs room. A connection's place is kept while it trickles a request head."""

    def __init__(self) -> None:
        self._order: collections.OrderedDict[FrontProtocol, None] = collections.OrderedDict()

    def add(self, connection: FrontProtocol) -> None:
        self._order.setdefault(connection, None)

    def discard(self, connection: FrontProtocol) -> None:
        self._order.pop(connection, None)

    def oldest(self) -> FrontProtocol | None:
        return next(iter(self._order), None)


class FrontProtocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines it lacks.

    uvicorn closes an idle connection only after a response (``timeout_keep_alive``);
    one that never completes a request head, stops sending its body or stops reading
    its answer, it keeps for ever, and the call with it. Here a head must be complete
    within ``header_timeout`` of its first byte (or of the connection), and neither a
    body nor an answer may stall for ``body_timeout``. A connection waiting for a head
    is listed in ``idle``, so that the listener can close the oldest one to make room.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        *,
        options: FrontOptions,
        idle: IdleConnections,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config, server_state, app_state)
        self.options = options
        self.idle = idle
        self.made = False  # connection_made has run (after the TLS handshake, with TLS)
        self._on_lost = on_lost
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0  # loop time of the body's last byte
        self._write_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    # An asyncio.Transport, not any BaseTransport: as uvicorn's own override declares.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.made = True
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.discard(self)
        self._cancel(head=True, body=True, write=True)
        try:
            super().connection_lost(exc)
        finally:
            self._on_lost()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY:
            self._body_seen = self.loop.time()
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.options.body_timeout, self._write_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel(write=True)

    # -- the deadlines

    def _follow(self) -> None:
        """Track the client's side of the connection: waiting for a head, or sending one."""
        if self.transport is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self.idle.add(self)
            # Between requests uvicorn's keep-alive timer runs; the head's starts with its
            # first byte (which cancels that timer) or with the connection.
            if self._head_timer is None and self.timeout_keep_alive_task is None:
                self._head_timer = self.loop.call_later(
                    self.options.header_timeout, self._head_late
                )
            return
        self.idle.discard(self)
        self._cancel(head=True)
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_seen = self.loop.time()
                self._body_timer = self.loop.call_later(self.options.body_timeout, self._body_check)
        else:
            self._cancel(body=True)

    def _cancel(self, head: bool = False, body: bool = False, write: bool = False) -> None:
        if head and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if body and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if write and self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE:
            self.drop()

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # We hold the body back (the call is not reading it yet, or has not yet said
            # "100 Continue" to a client that waits for it): not the client's stall.
            self._body_seen = now
        quiet = now - self._body_seen
        if quiet < self.options.body_timeout:
            self._body_timer = self.loop.call_later(
                self.options.body_timeout - quiet, self._body_check
            )
            return
        self._body_stalled()

    def _write_late(self) -> None:
        """The client has taken nothing of the answer for ``body_timeout``: let it go. The
        app sees it go away, which cancels the call."""
        self._write_timer = None
        if self.flow.write_paused and not self.transport.is_closing():
            log.debug("HTTP: a client stopped reading its answer; closing its connection")
            self.drop()

    def _body_stalled(self) -> None:
        """End a request whose body stopped coming: 408 if the answer has not begun, then close.

        The app sees the client go away, which cancels its call up to the worker.
        """
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            body = json.dumps(
                {
                    "code": "DEADLINE_EXCEEDED",
                    "reason": "DEADLINE_EXCEEDED",
                    "message": f"the request body stalled: nothing came for "
                    f"{self.options.body_timeout:g} s",
                }
            ).encode()
            self._write_answer(408, body)
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _write_answer(self, status: int, body: bytes) -> None:
        """A JSON answer of our own, written straight to the connection, which then closes."""
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"content-security-policy", DATA_POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        try:
            head = h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status])
            self.transport.write(self.conn.send(head))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # the connection's state allows no answer now: it just closes

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: the API's JSON error, with the front's headers."""
        body = json.dumps(
            {
                "code": "INVALID_ARGUMENT",
                "reason": "INVALID_INPUT",
                "message": "invalid HTTP request",
            }
        ).encode()
        self._write_answer(400, body)
        self.transport.close()

    def drop(self) -> None:
        """Close a connection at once: one with no request in progress (timed out, or to make
        room), or one whose client stopped reading. Whatever it has not read is dropped."""
        self.idle.discard(self)
        if self.transport.is_closing():
            return
        log.debug(
            "HTTP: dropping a connection from %s (client %s)",
            self.client,
            self.conn.their_state.__name__,
        )
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.abort()


def connection_cap(configured: int) -> tuple[int, int | None]:
    """(connections the front may hold, the process's open-file limit or None if unlimited).

    The front takes at most half the descriptors: the rest are the gateway's gRPC
    callers and workers (in the embedded default, the same process), the log, the
    model's files.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured, None
    return max(1, min(configured, soft // 2)), soft


class Listener:
    """The front's accept loop, in place of asyncio's.

    asyncio's server accepts every connection it can, and out of descriptors it logs
    one traceback per failed accept (thousands a second). This one holds at most
    ``cap`` connections: at the cap it closes the connection idle the longest, or,
    with every connection busy with a call, answers 503 and closes the new one; out
    of descriptors it closes an idle connection too, or waits a moment, and says so
    once per interval.
    """

    def __init__(
        self,
        sock: socket.socket,
        make_protocol: Callable[[Callable[[], None]], FrontProtocol],
        ssl_context: ssl.SSLContext | None,
        *,
        cap: int,
        handshake_timeout: float,
        idle: IdleConnections,
    ) -> None:
        self.sock = sock
        self.cap = cap
        # Accepted sockets not closed yet: each holds a descriptor, from accept() until
        # its protocol's connection_lost (or its failed start).
        self.open_connections = 0
        self._make_protocol = make_protocol
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._idle = idle
        self._opening: set[asyncio.Task[None]] = set()
        self._starved = ThrottledLog(log, RESOURCE_LOG_SECONDS)
        self._full = ThrottledLog(log, RESOURCE_LOG_SECONDS)
        self._task = asyncio.create_task(self._accept_loop())
        self._task.add_done_callback(_report_end)

    def _closed(self) -> None:
        self.open_connections -= 1

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    await self._out_of_descriptors(exc)
                elif exc.errno not in GONE_BEFORE_ACCEPT:
                    self._starved.warning("HTTP: accept failed: %s", exc)
                    await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if await self._room():
                conn.setblocking(False)
                self.open_connections += 1
                task = loop.create_task(self._open(conn, loop))
                self._opening.add(task)
                task.add_done_callback(self._opening.discard)
            else:
                self._refuse(conn)
            # A waiting connection is accepted without a pause; let the loop run the new
            # connection's start, the closed ones' ends and the gateway between accepts.
            await asyncio.sleep(0)

    async def _out_of_descriptors(self, exc: OSError) -> None:
        log.debug("HTTP: accept failed for want of a descriptor: %s", exc.strerror)
        self._starved.warning(
            "HTTP: out of file descriptors (%s) with %d HTTP connections open; "
            "closing idle ones and retrying",
            exc.strerror,
            self.open_connections,
        )
        victim = self._idle.oldest()
        if victim is not None:
            victim.drop()
            await asyncio.sleep(0)  # its descriptor is closed in the loop's next round
        else:
            await asyncio.sleep(ACCEPT_RETRY_SECONDS)

    async def _room(self) -> bool:
        """Make room for one more connection; False if every connection is busy with a call
        (or, with TLS, still shaking hands, which ``header_timeout`` bounds)."""
        while self.open_connections >= self.cap:
            victim = self._idle.oldest()
            if victim is None:
                return False
            victim.drop()
            await asyncio.sleep(0)  # its descriptor is closed in the loop's next round
        return True

    async def _open(self, conn: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        protocol = self._make_protocol(self._closed)
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl else None,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            log.debug("HTTP: a connection ended before it began: %s", exc)
        finally:
            if not protocol.made:  # no connection_lost will come to count it out
                conn.close()
                self._closed()

    def _refuse(self, conn: socket.socket) -> None:
        """Every connection is busy with a call: tell this one to come back, and close it."""
        self._full.warning(
            "HTTP: refused a connection: all %d connections are busy with calls", self.cap
        )
        if self._ssl is None:
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                # Take the request if it is in already, so that the close is a FIN, not
                # a reset that could discard the answer before the client reads it.
                conn.recv(MAX_HEAD_BYTES)
            with contextlib.suppress(OSError):
                conn.send(BUSY_ANSWER)
                conn.shutdown(socket.SHUT_WR)
        conn.close()

    def close(self) -> None:
        self._task.cancel()
        for task in self._opening:
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._task, *self._opening, return_exceptions=True)


def _report_end(task: asyncio.Task[None]) -> None:
    """The accept loop ends only when the front stops; anything else is a bug, said loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "HTTP: the accept loop failed; no new connections are taken", exc_info=task.exception()
        )


def _busy_answer() -> bytes:
    body = json.dumps(
        {
            "code": "UNAVAILABLE",
            "reason": "UNAVAILABLE",
            "message": "the HTTP front has no free connection: try again shortly",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n"
        f"content-security-policy: {DATA_POLICY}\r\nx-content-type-options: nosniff\r\n\r\n"
    )
    return head.encode() + body


BUSY_ANSWER = _busy_answer()


class FrontServer(uvicorn.Server):
    """uvicorn's server with the front's own accept loop and protocol.

    uvicorn runs the app's lifespan and the graceful shutdown; the socket is ours.
    The caller owns SIGTERM and SIGINT: uvicorn's own signal handling is off.
    """

    def __init__(
        self, config: uvicorn.Config, sock: socket.socket, options: FrontOptions, cap: int
    ) -> None:
        super().__init__(config)
        self.sock = sock
        self.options = options
        self.cap = cap
        self.idle = IdleConnections()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the stop event is ours; uvicorn must not take the signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan only: no asyncio server
        self.servers = [
            Listener(  # type: ignore[list-item]  # closed and awaited like a Server
                self.sock,
                self._protocol,
                self.config.ssl,
                cap=self.cap,
                handshake_timeout=self.options.header_timeout,
                idle=self.idle,
            )
        ]

    def _protocol(self, on_lost: Callable[[], None]) -> FrontProtocol:
        return FrontProtocol(
            self.config,
            self.server_state,
            self.lifespan.state,
            options=self.options,
            idle=self.idle,
            on_lost=on_lost,
        )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a busy port is a clear error of ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it each answer's last small write waits for a delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
