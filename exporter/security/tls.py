"""TLS for `mlmon serve`: an asyncio listener in the exporter's process, in front of waitress.

Waitress speaks no TLS, and it should stay the HTTP server: it reads whole requests on its I/O thread before a
worker thread sees them, so a slow client cannot hold a worker (and with it ingest for everyone else). This
module keeps that property and adds TLS in front of it, in the same process:

    client --TLS--> [public port: TLSListener, one asyncio thread] --plain bytes--> [127.0.0.1:random: waitress]

- The listener does the TLS handshake (``ssl_handshake_timeout``), checks ``client_allowed_sans``, opens a
  loopback connection to waitress per client connection and copies bytes both ways, with back-pressure
  (``drain``) and an idle timeout. It parses no HTTP: keep-alive, pipelining and waitress's limits work as
  without TLS.
- Before forwarding a byte it records, in :class:`webconfig.Peers`, the local port of its loopback connection
  -> the real client. :class:`webconfig.Guard` looks the request's ``REMOTE_PORT`` up there, so the app sees
  the real ``REMOTE_ADDR`` and ``wsgi.url_scheme`` ``https``; a request whose port is not in the map reached
  waitress's loopback port directly, bypassing TLS, and is refused with 403.
- A reloaded web config (new certificate, key, CA, versions) applies to new connections: a new asyncio server
  is started on a duplicate of the same listening socket and the old one stops accepting, so no connection is
  refused during the swap and open connections keep their session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading

from exporter.security.webconfig import Holder, Peers, WebConfig

log = logging.getLogger("mlmon.tls")

CHUNK = 256 * 1024


def bind(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The public listening socket, bound now so that a busy port fails `mlmon serve` at start."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class TLSListener:
    """Terminates TLS on `sock` and forwards each connection to waitress on 127.0.0.1:`upstream_port`."""

    def __init__(
        self,
        sock: socket.socket,
        upstream_port: int,
        holder: Holder,
        peers: Peers,
        *,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        max_connections: int = 1000,
        check_every: float = 1.0,
    ):
        self.sock, self.upstream_port, self.holder, self.peers = sock, upstream_port, holder, peers
        self.handshake_timeout, self.idle_timeout = handshake_timeout, idle_timeout
        self.max_connections, self.check_every = max_connections, check_every
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._connections: set[asyncio.Task] = set()
        self._grace = 5.0

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="mlmon-tls", daemon=True)
        self.thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, give open connections `grace` seconds, then close them."""
        if self.thread is None or not self.thread.is_alive():
            return
        self._grace = grace
        self.loop.call_soon_threadsafe(lambda: self._stop.set() if self._stop else None)
        self.thread.join(grace + 10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start(), or logged
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("the TLS listener stopped")
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.sock.close()

    async def _serve(self, config: WebConfig) -> asyncio.AbstractServer:
        return await asyncio.start_server(
            functools.partial(self._accepted, config),
            sock=self.sock.dup(),  # the server closes its copy; the socket lives on for the next one
            ssl=config.ssl_context,
            ssl_handshake_timeout=self.handshake_timeout,
            ssl_shutdown_timeout=5.0,
            limit=CHUNK,
        )

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        config = self.holder.config
        server = await self._serve(config)
        self._ready.set()
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.check_every)
            fresh = self.holder.current()  # re-reads the files if they changed
            if fresh is not config and fresh.ssl_context is not None:
                old, server, config = server, await self._serve(fresh), fresh
                old.close()
                log.info("TLS settings reloaded; new connections use them")
        server.close()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=self._grace)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=6.0)

    def _accepted(self, config: WebConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._connection(config, reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _connection(self, config: WebConfig, reader, writer) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        up_writer = None
        local_port = None
        try:
            tls = config.tls
            if len(self._connections) > self.max_connections:
                log.warning("too many TLS connections; closing one", extra={"fields": {"client": peer[0]}})
                return
            if tls is not None and not tls.allowed_peer(writer.get_extra_info("peercert")):
                log.warning(
                    "client certificate names none of client_allowed_sans", extra={"fields": {"client": peer[0]}}
                )
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=CHUNK)
            except OSError as exc:
                log.error("cannot reach the HTTP server on loopback: %s", exc)
                return
            local_port = up_writer.get_extra_info("sockname")[1]
            ssl_object = writer.get_extra_info("ssl_object")
            self.peers.add(
                local_port,
                {
                    "address": peer[0],
                    "port": peer[1],
                    "tls_version": ssl_object.version() if ssl_object else None,
                    "cipher": ssl_object.cipher()[0] if ssl_object else None,
                },
            )
            await self._forward(reader, writer, up_reader, up_writer)
        except (ConnectionError, OSError):
            pass  # the client or waitress went away; nothing to answer
        finally:
            if local_port is not None:
                self.peers.remove(local_port)
            for w in (up_writer, writer):
                if w is not None:
                    w.close()
            for w in (up_writer, writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.wait_closed(), 5.0)

    async def _forward(self, reader, writer, up_reader, up_writer) -> None:
        loop = asyncio.get_running_loop()
        activity = [loop.time()]

        async def pump(src, dst, on_eof) -> None:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    on_eof()
                    return
                activity[0] = loop.time()
                dst.write(data)
                await dst.drain()
                activity[0] = loop.time()

        def client_done() -> None:
            # The client half-closed: tell waitress, as a direct client's FIN would.
            with contextlib.suppress(OSError):
                up_writer.write_eof()

        upstream = asyncio.ensure_future(pump(reader, up_writer, client_done))
        downstream = asyncio.ensure_future(pump(up_reader, writer, lambda: None))
        try:
            while not downstream.done():
                waiting = {downstream} if upstream.done() else {downstream, upstream}
                await asyncio.wait(waiting, timeout=min(self.idle_timeout / 4, 5.0), return_when="FIRST_COMPLETED")
                if upstream.done() and not upstream.cancelled() and upstream.exception() is not None:
                    return  # the client's side failed (reset, TLS error): drop the connection
                if loop.time() - activity[0] > self.idle_timeout:
                    return  # nothing moved either way for idle_timeout: a stalled or vanished client
        finally:
            for task in (upstream, downstream):
                task.cancel()
            for task in (upstream, downstream):
                with contextlib.suppress(BaseException):
                    await task
