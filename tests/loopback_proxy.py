"""A small HTTP proxy on loopback for the tests: CONNECT tunnels, forwarding, rewriting.

Forward mode (no `upstream`): CONNECT opens a tunnel (HTTPS_PROXY); an absolute-form request
(`GET http://host:port/path`, HTTP_PROXY) is forwarded. Reverse mode (`upstream` set): every
request goes to that one server. Either way one request per client connection, headers
optionally rewritten on the way, and everything recorded for the test to assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Seen:
    """One request as the proxy forwarded it."""

    method: str
    target: str
    headers: dict[str, str]


@dataclass
class LoopbackProxy:
    upstream: tuple[str, int] | None = None
    # Header values to set (or add) on each forwarded request, e.g. User-Agent rewriting.
    set_headers: dict[str, str] = field(default_factory=dict)
    connects: list[str] = field(default_factory=list)
    forwarded: list[Seen] = field(default_factory=list)
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = [tuple(line.split(":", 1)) for line in lines if line]
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
            return

        length = int(_header(headers, "Content-Length") or 0)
        body = await reader.readexactly(length) if length else b""
        host, port, path = self._destination(target, headers)
        out = [(name, value.strip()) for name, value in headers
               if name.lower() not in {"connection", "proxy-connection"}
               and name.lower() not in {n.lower() for n in self.set_headers}]
        out += [*self.set_headers.items(), ("Connection", "close")]
        self.forwarded.append(Seen(method, path, {name.lower(): value for name, value in out}))

        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        lines_out = [f"{method} {path} {version}", *(f"{n}: {v}" for n, v in out), "", ""]
        upstream_writer.write("\r\n".join(lines_out).encode("latin-1") + body)
        await upstream_writer.drain()
        writer.write(await upstream_reader.read())  # the upstream closes: Connection: close
        await writer.drain()
        upstream_writer.close()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connects.append(target)
        host, _, port = target.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )

    def _destination(self, target: str, headers: list) -> tuple[str, int, str]:
        if self.upstream is not None:
            return self.upstream[0], self.upstream[1], target
        parts = urlsplit(target)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return parts.hostname or "", parts.port or 80, path


def _header(headers: list, name: str) -> str | None:
    return next((value.strip() for key, value in headers if key.lower() == name.lower()), None)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
